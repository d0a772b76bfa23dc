"""``timm.optim.LaProp`` on the functional engine (``fo.timm.laprop``).

No ``from __future__ import annotations`` here: the signature's annotations are timm's
objects, so ``inspect.signature(LaProp)`` prints exactly as timm's does.
"""

from typing import Optional, Tuple

import torch
from torch.optim.optimizer import ParamsT

import functional_optim as fo
from functional_optim.aliases._common import reject

from ..optimizer import Entry
from ..torch_optim import _TorchCompatible, _torch_step
from ._lamb import max_lr_snapshot, reject_below

__all__ = ["LaProp"]

_S = "ScaleByLapropState."


class LaProp(_TorchCompatible):
    """``timm.optim.LaProp`` on the functional engine (``fo.timm.laprop``), with timm's
    signature, checks, group keys (``max_lr_snapshot``) and per-param state, so checkpoints
    load both ways: ``step`` (a float tensor), ``exp_avg``, ``exp_avg_lr_1`` (the average
    of the lrs, a Python float), ``exp_avg_lr_2`` (the second moment's bias correction, a
    0-d tensor in torch's scalar dtype) and ``exp_avg_sq``.

    Args:
      params: an iterable of tensors or of param-group dicts.
      lr: learning rate >= 0. Default 4e-4.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.999).
      eps: added to the gradient's RMS, >= 0. Default 1e-15.
      weight_decay: decoupled decay >= 0, applied after the step. Default 0.
      caution: Cautious Optimizers' mask. Default False.
      corrected_weight_decay: decay scaled by ``lr**2 / max_lr_snapshot``. Default False.
      foreach: accepted and ignored (the engine chooses). Default None.

    Invalid values raise ValueError with timm's message followed by the rule naming the
    argument. The math is ``fo.timm.laprop``'s; for compiled steps use
    ``FunctionalOptimizer(params, fo.timm.laprop, compile=True, ...)`` (same state names).
    ``exp_avg_lr_1`` is exported as a Python float also when ``lr`` is a tensor (timm then
    keeps a tensor).

    References:
      Ziyin, Wang & Ueda, *LaProp: Separating Momentum and Adaptivity in Adam*, 2020,
      arXiv:2002.04839.

    Example:
      >>> import torch
      >>> from adapters.timm import LaProp
      >>> w = torch.nn.Parameter(torch.ones(2))
      >>> opt = LaProp([w], lr=0.1)
      >>> w.grad = torch.tensor([0.5, -3.0])
      >>> opt.step()
      >>> w.detach(), list(opt.state_dict()["state"][0])
      (tensor([0.9000, 1.1000]), ['step', 'exp_avg', 'exp_avg_lr_1', 'exp_avg_lr_2', 'exp_avg_sq'])
    """

    def __init__(
            self,
            params: ParamsT,
            lr: float = 4e-4,
            betas: Tuple[float, float] = (0.9, 0.999),
            eps: float = 1e-15,
            weight_decay: float = 0.,
            caution: bool = False,
            corrected_weight_decay: bool = False,
            foreach: Optional[bool] = None,
    ):
        reject_below(lr, 0.0, f"Invalid learning rate: {lr}", "lr must be >= 0")
        reject_below(eps, 0.0, f"Invalid epsilon: {eps}", "eps must be >= 0")
        for i in (0, 1):
            reject(not 0.0 <= betas[i] < 1.0, f"Invalid beta parameter at index {i}: {betas[i]}",
                   f"betas[{i}] must be in [0, 1)")
        snapshot = max_lr_snapshot(lr, corrected_weight_decay)
        self._setup(params, fo.timm.laprop, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, caution=caution,
            corrected_weight_decay=corrected_weight_decay, max_lr_snapshot=snapshot, foreach=foreach), False)

    def _export_entry(self, entry: Entry) -> Entry:
        if _S + "count" not in entry or int(entry[_S + "count"]) == 0:
            return {}  # timm creates a param's state at its first gradient
        return {"step": _torch_step(entry[_S + "count"]), "exp_avg": entry[_S + "mu"],
                "exp_avg_lr_1": float(entry[_S + "lr_avg"]), "exp_avg_lr_2": entry[_S + "nu_correction"].clone(),
                "exp_avg_sq": entry[_S + "nu"]}

    def _import_entry(self, entry: Entry) -> Entry:
        names = {"step": "count", "exp_avg": "mu", "exp_avg_lr_1": "lr_avg", "exp_avg_lr_2": "nu_correction",
                 "exp_avg_sq": "nu"}
        out = {}
        for key, name in names.items():
            value = entry.get(key)
            if value is None:
                continue
            # a Python float (exp_avg_lr_1) is a double: kept in float64
            value = value if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=torch.float64)
            out[_S + name] = value.to(torch.int32) if key == "step" else value
        return out
