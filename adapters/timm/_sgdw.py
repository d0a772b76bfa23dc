"""``timm.optim.SGDW`` on the functional engine (``fo.timm.sgdw``).

No ``from __future__ import annotations`` here: the signature prints exactly as timm's.
"""

from typing import Optional

import torch
from torch.optim.optimizer import ParamsT

import functional_optim as fo

from ._adabelief import _reject
from ._adamw_legacy import _max_lr_snapshot
from ..optimizer import Entry
from ..torch_optim import _TorchCompatible

__all__ = ["SGDW"]


class SGDW(_TorchCompatible):
    """``timm.optim.SGDW`` on the functional engine (``fo.timm.sgdw``), with timm's
    signature, checks, group keys (``max_lr_snapshot``) and per-param state
    (``momentum_buffer``: the buffer, or None for a stepped param without momentum, as
    timm stores it), so checkpoints load both ways.

    Args:
      params: an iterable of tensors or of param-group dicts.
      lr: learning rate >= 0. Default 1e-3.
      momentum: >= 0. Default 0.
      dampening: dampening of the gradient term. Default 0.
      weight_decay: decoupled decay >= 0. Default 0.
      nesterov: Nesterov momentum (needs momentum > 0 and dampening 0). Default False.
      caution: Cautious Optimizers' mask (with momentum only, as timm). Default False.
      corrected_weight_decay: decay scaled by ``lr**2 / max_lr_snapshot``. Default False.
      maximize: maximize the objective. Default False.
      foreach: accepted and ignored (the engine chooses). Default None.
      differentiable: must be False (ValueError; differentiate with functional_optim directly).

    Invalid values raise ValueError with timm's message followed by the rule naming the
    argument. The math is ``fo.timm.sgdw``'s.

    References:
      Loshchilov & Hutter, *Decoupled Weight Decay Regularization*, 2017, arXiv:1711.05101.

    Example:
      >>> import torch
      >>> from adapters.timm import SGDW
      >>> w = torch.nn.Parameter(torch.ones(2))
      >>> opt = SGDW([w], lr=0.1, momentum=0.9, weight_decay=0.5)
      >>> w.grad = torch.ones(2)
      >>> opt.step()
      >>> w.detach(), sorted(opt.state_dict()["state"][0])
      (tensor([0.8500, 0.8500]), ['momentum_buffer'])
    """

    _tracks_steps = True  # a stepped param without momentum is listed, with a None buffer

    def __init__(
            self,
            params: ParamsT,
            lr: float = 1e-3,
            momentum: float = 0.,
            dampening: float = 0.,
            weight_decay: float = 0.,
            nesterov: bool = False,
            *,
            caution: bool = False,
            corrected_weight_decay: bool = False,
            maximize: bool = False,
            foreach: Optional[bool] = None,
            differentiable: bool = False,
    ):
        _reject(lr < 0.0, f"Invalid learning rate: {lr}", "lr must be >= 0")
        _reject(momentum < 0.0, f"Invalid momentum value: {momentum}", "momentum must be >= 0")
        _reject(weight_decay < 0.0, f"Invalid weight_decay value: {weight_decay}", "weight_decay must be >= 0")
        snapshot = _max_lr_snapshot(lr, corrected_weight_decay)
        _reject(nesterov and (momentum <= 0 or dampening != 0),
                "Nesterov momentum requires a momentum and zero dampening",
                "nesterov=True needs momentum > 0 and dampening == 0")
        self._setup(params, fo.timm.sgdw, dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
            caution=caution, corrected_weight_decay=corrected_weight_decay, max_lr_snapshot=snapshot,
            maximize=maximize, foreach=foreach, differentiable=differentiable), False)

    def _export_entry(self, entry: Entry) -> Entry:
        if "TraceState.trace" in entry and int(entry["TraceState.count"]) > 0:
            return {"momentum_buffer": entry["TraceState.trace"]}
        return {"momentum_buffer": None}  # listed only once stepped (_tracks_steps)

    def _import_entry(self, entry: Entry) -> Entry:
        buf = entry.get("momentum_buffer")
        if buf is None:
            return {}
        return {"TraceState.trace": buf, "TraceState.count": torch.ones((), dtype=torch.int32)}
