"""``timm.optim.Adan`` on the functional engine (``fo.timm.adan``).

No ``from __future__ import annotations`` here: the signature prints exactly as timm's.
"""

from typing import Optional, Tuple

import torch

import functional_optim as fo
from functional_optim.transforms.adan import ScaleByAdanState

from ._adabelief import _reject
from ..optimizer import Entry
from ..group_step import GroupStepped

__all__ = ["Adan"]

_S = "ScaleByAdanState."
_MOMENTS = {"exp_avg": _S + "mu", "exp_avg_sq": _S + "nu", "exp_avg_diff": _S + "delta",
            "neg_pre_grad": _S + "neg_prev_grad"}


class Adan(GroupStepped):
    """``timm.optim.Adan`` on the functional engine (``fo.timm.adan``), with timm's
    signature, checks, group keys and state_dict format (checkpoints load both ways).

    Per-param state ``exp_avg``, ``exp_avg_sq``, ``exp_avg_diff`` and ``neg_pre_grad``
    (minus the last gradient); each stepped param group holds timm's ``step`` (a Python
    int, counted even when the group has no gradient: the bias corrections use it).

    Args:
      params: an iterable of tensors or of param-group dicts.
      lr: learning rate >= 0. Default 1e-3.
      betas: ``(beta1, beta2, beta3)``, each in [0, 1). Default (0.98, 0.92, 0.99).
      eps: added to the denominator, >= 0. Default 1e-8.
      weight_decay: >= 0 (timm does not check it; we do). Default 0.
      no_prox: decay the params directly instead of the proximal division. Default False.
      caution: Cautious Optimizers' mask on the first-moment term. Default False.
      foreach: accepted and ignored (the engine chooses). Default None.

    Invalid values raise ValueError with timm's message followed by the rule naming the
    argument. ``restart_opt()`` zeroes the moments and the step, as timm's.

    References:
      Xie et al., *Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep
      Models*, 2022, arXiv:2208.06677.

    Example:
      >>> import torch
      >>> from adapters.timm import Adan
      >>> w = torch.nn.Parameter(torch.ones(2))
      >>> opt = Adan([w], lr=0.1)
      >>> w.grad = torch.tensor([3.0, -3.0])
      >>> opt.step()
      >>> w.detach(), opt.state_dict()["param_groups"][0]["step"]
      (tensor([0.9000, 1.1000]), 1)
    """

    _state_cls, _count_key = ScaleByAdanState, _S + "count"  # the group's step

    def __init__(self,
            params,
            lr: float = 1e-3,
            betas: Tuple[float, float, float] = (0.98, 0.92, 0.99),
            eps: float = 1e-8,
            weight_decay: float = 0.0,
            no_prox: bool = False,
            caution: bool = False,
            foreach: Optional[bool] = None,
    ):
        _reject(not 0.0 <= lr, f"Invalid learning rate: {lr}", "lr must be >= 0")
        _reject(not 0.0 <= eps, f"Invalid epsilon value: {eps}", "eps must be >= 0")
        if not isinstance(betas, (tuple, list)) or len(betas) != 3:
            raise ValueError(f"betas must be a triple (beta1, beta2, beta3), got {betas!r}")
        for i in range(3):
            _reject(not 0.0 <= betas[i] < 1.0, f"Invalid beta parameter at index {i}: {betas[i]}",
                    f"betas[{i}] must be in [0, 1)")
        _reject(not 0.0 <= weight_decay, f"Invalid weight_decay value: {weight_decay}", "weight_decay must be >= 0")
        self._setup(params, fo.timm.adan, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, no_prox=no_prox, caution=caution,
            foreach=foreach), False)

    # -- stepping ------------------------------------------------------------------------

    @torch.no_grad()
    def restart_opt(self) -> None:
        """timm's restart: every group's step back to 0 and the moments of every param that
        requires grad to zero (the last gradient is kept; the next step starts afresh)."""
        for group in self.param_groups:
            for p in group["params"]:
                if not p.requires_grad:
                    continue
                entry = {"step": 0, **{key: torch.zeros_like(p) for key in ("exp_avg", "exp_avg_sq", "exp_avg_diff")}}
                previous = self._exported_entry(p) or {}
                if "neg_pre_grad" in previous:
                    entry["neg_pre_grad"] = previous["neg_pre_grad"].clone()
                self._assign_entry(p, entry)

    # -- timm's state_dict: per-param moments, the step count in the param group ------------

    def _export_entry(self, entry: Entry) -> Entry:
        if _S + "leaf_count" not in entry or int(entry[_S + "leaf_count"]) == 0:
            return {}  # timm creates a param's state at its first gradient
        return {key: entry[name] for key, name in _MOMENTS.items()}

    def _import_entry(self, entry: Entry) -> Entry:
        out = {}
        step = entry.get("step")
        if step is not None:
            out[_S + "count"] = torch.as_tensor(step).to(torch.int32)
        for key, name in _MOMENTS.items():
            if entry.get(key) is not None:
                out[name] = entry[key]
        if "neg_pre_grad" in entry:  # timm's state exists from a param's first gradient
            out[_S + "leaf_count"] = torch.as_tensor(max(int(step or 1), 1)).to(torch.int32)
        return out

