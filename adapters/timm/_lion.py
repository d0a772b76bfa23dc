"""``timm.optim.Lion`` on the functional engine (``fo.timm.lion``).

No ``from __future__ import annotations`` here: the signature's annotations are timm's
objects, so ``inspect.signature(Lion)`` prints exactly as timm's does.
"""

from typing import Optional, Tuple

import torch
from torch.optim.optimizer import ParamsT

import functional_optim as fo
from functional_optim.aliases._common import reject

from ..optimizer import Entry
from ..torch_optim import _TorchCompatible
from ._lamb import max_lr_snapshot, reject_below

__all__ = ["Lion"]

_MU, _COUNT = "ScaleByLionState.mu", "ScaleByLionState.count"


class Lion(_TorchCompatible):
    """``timm.optim.Lion`` on the functional engine (``fo.timm.lion``), with timm's
    signature, checks, group keys (``max_lr_snapshot``) and per-param state (``exp_avg``,
    created at a param's first step), so checkpoints load both ways.

    Args:
      params: an iterable of tensors or of param-group dicts.
      lr: learning rate >= 0. Default 1e-4.
      betas: ``(beta1, beta2)``, each in [0, 1): the update's interpolation and the
        momentum's decay. Default (0.9, 0.99).
      weight_decay: decoupled decay >= 0, applied to the params before the step. Default 0.
      caution: Cautious Optimizers' mask on the sign. Default False.
      corrected_weight_decay: decay scaled by ``lr**2 / max_lr_snapshot``. Default False.
      maximize: maximize the objective. Default False.
      foreach: accepted and ignored (the engine chooses). Default None.

    Invalid values raise ValueError with timm's message followed by the rule naming the
    argument. The math is ``fo.timm.lion``'s; for compiled steps use
    ``FunctionalOptimizer(params, fo.timm.lion, compile=True, ...)`` (same state names).

    References:
      Chen et al., *Symbolic Discovery of Optimization Algorithms*, 2023, arXiv:2302.06675.

    Example:
      >>> import torch
      >>> from adapters.timm import Lion
      >>> w = torch.nn.Parameter(torch.ones(2))
      >>> opt = Lion([w], lr=0.1)
      >>> w.grad = torch.tensor([0.5, -3.0])
      >>> opt.step()
      >>> w.detach(), sorted(opt.state_dict()["state"][0])
      (tensor([0.9000, 1.1000]), ['exp_avg'])
    """

    def __init__(
            self,
            params: ParamsT,
            lr: float = 1e-4,
            betas: Tuple[float, float] = (0.9, 0.99),
            weight_decay: float = 0.0,
            caution: bool = False,
            corrected_weight_decay: bool = False,
            maximize: bool = False,
            foreach: Optional[bool] = None,
    ):
        reject_below(lr, 0.0, f"Invalid learning rate: {lr}", "lr must be >= 0")
        for i in (0, 1):
            reject(not 0.0 <= betas[i] < 1.0, f"Invalid beta parameter at index {i}: {betas[i]}",
                    f"betas[{i}] must be in [0, 1)")
        snapshot = max_lr_snapshot(lr, corrected_weight_decay)
        self._setup(params, fo.timm.lion, dict(
            lr=lr, betas=betas, weight_decay=weight_decay, caution=caution,
            corrected_weight_decay=corrected_weight_decay, max_lr_snapshot=snapshot, foreach=foreach,
            maximize=maximize), False)

    # timm keeps only the momentum, created at a param's first step (the counter is ours)
    def _export_entry(self, entry: Entry) -> Entry:
        if _MU not in entry or int(entry[_COUNT]) == 0:
            return {}
        return {"exp_avg": entry[_MU]}

    def _import_entry(self, entry: Entry) -> Entry:
        mu = entry.get("exp_avg")
        return {} if mu is None else {_MU: mu, _COUNT: torch.ones((), dtype=torch.int32)}
