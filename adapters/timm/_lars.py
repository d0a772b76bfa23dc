"""``timm.optim.Lars`` (LARS, and LARC with ``trust_clip``) on the functional engine
(``fo.timm.lars``).

No ``from __future__ import annotations`` here: the signature prints exactly as timm's.
"""

from typing import Optional

import torch

import functional_optim as fo
from functional_optim.hyperparams import concrete

from ..optimizer import Entry
from ..torch_optim import _TorchCompatible
from ._lamb import reject_below

__all__ = ["Lars"]


class Lars(_TorchCompatible):
    """``timm.optim.Lars`` on the functional engine (``fo.timm.lars``), with timm's
    signature, checks, update and state_dict format (per-param ``momentum_buffer``, made at
    a param's first gradient when ``momentum != 0``; checkpoints load both ways).

    Args:
      params: an iterable of tensors or of param-group dicts.
      lr: learning rate >= 0. Default 1.0.
      momentum: momentum factor >= 0. Default 0.
      dampening: dampening of the momentum. Default 0.
      weight_decay: >= 0; the trust ratio applies when it is nonzero (or ``always_adapt``). Default 0.
      nesterov: Nesterov momentum (needs momentum > 0 and zero dampening). Default False.
      trust_coeff: the trust coefficient. Default 0.001.
      eps: added to the ratio's denominator. Default 1e-8.
      trust_clip: LARC, clip the ratio divided by lr at 1. Default False.
      always_adapt: apply the ratio also at zero weight decay. Default False.
      foreach: accepted and ignored (the engine chooses). Default None.

    Invalid values raise ValueError with timm's message followed by the rule and the
    argument's name (``trust_coeff`` and ``eps`` must be >= 0 too, which timm does not
    check). For compiled steps use ``FunctionalOptimizer(params, fo.timm.lars, compile=True, ...)``.

    Example:
      >>> import torch
      >>> from adapters.timm import Lars
      >>> w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
      >>> opt = Lars([w], lr=0.5, momentum=0.9, weight_decay=0.01, trust_coeff=0.1)
      >>> w.grad = torch.tensor([2.0, 0.0])
      >>> opt.step()
      >>> sorted(opt.state_dict()["state"][0])
      ['momentum_buffer']
    """

    def __init__(
        self,
        params,
        lr=1.0,
        momentum=0,
        dampening=0,
        weight_decay=0,
        nesterov=False,
        trust_coeff=0.001,
        eps=1e-8,
        trust_clip=False,
        always_adapt=False,
        foreach: Optional[bool] = None,
    ):
        reject_below(lr, 0.0, f"Invalid learning rate: {lr}", "lr must be >= 0")
        reject_below(momentum, 0.0, f"Invalid momentum value: {momentum}", "momentum must be >= 0")
        reject_below(weight_decay, 0.0, f"Invalid weight_decay value: {weight_decay}", "weight_decay must be >= 0")
        m, d = concrete(momentum), concrete(dampening)
        if nesterov and ((m is not None and m <= 0) or (d is not None and d != 0)):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening "
                             "(nesterov=True needs momentum > 0 and dampening == 0)")
        self._setup(params, fo.timm.lars, dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
            trust_coeff=trust_coeff, eps=eps, trust_clip=trust_clip, always_adapt=always_adapt,
            foreach=foreach), False)

    def _export_entry(self, entry: Entry) -> Entry:
        # timm keeps a momentum buffer only with momentum, from a param's first gradient
        if "TraceState.trace" not in entry or int(entry["TraceState.count"]) == 0:
            return {}
        return {"momentum_buffer": entry["TraceState.trace"]}

    def _import_entry(self, entry: Entry) -> Entry:
        buf = entry.get("momentum_buffer")
        if buf is None:
            return {}
        return {"TraceState.trace": buf, "TraceState.count": torch.ones((), dtype=torch.int32)}
