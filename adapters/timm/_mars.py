"""``timm.optim.Mars`` on the functional engine (``fo.timm.mars``).

No ``from __future__ import annotations`` here: the signature's annotations are timm's
objects, so ``inspect.signature(Mars)`` prints exactly as timm's does.
"""

from typing import Any, Dict, Optional, Tuple

import torch
from torch.optim.optimizer import ParamsT

import functional_optim as fo
from functional_optim.aliases._common import reject

from ..optimizer import Entry
from ..torch_optim import _TorchCompatible
from ._lamb import reject_below

__all__ = ["Mars"]

# our state names per timm key, by the branch of fo.timm.mars's partition a param is in:
# "mars" (>= 2 dims, or optimize_1d) comes first, so the AdamW fallback's repeats of its
# state classes are numbered "#2" (see adapters.state_io)
_MARK = "_mars_branch"


def _names(branch: str, mars_type: str) -> dict:
    if branch == "mars":
        moments = "ScaleByAdamState" if mars_type == "adamw" else "EmaState"
        return {"step": ("MarsGradientCorrectionState.count", f"{moments}.count"),
                "exp_avg": (f"{moments}.mu" if mars_type == "adamw" else f"{moments}.ema",),
                "last_grad": ("MarsGradientCorrectionState.last_grad",),
                "exp_avg_sq": ("ScaleByAdamState.nu",) if mars_type == "adamw" else ()}
    suffix = "#2" if mars_type == "adamw" else ""
    return {"step": ("MarsGradientCorrectionState.count#2", f"ScaleByAdamState.count{suffix}"),
            "exp_avg": (f"ScaleByAdamState.mu{suffix}",), "last_grad": ("MarsGradientCorrectionState.last_grad#2",),
            "exp_avg_sq": (f"ScaleByAdamState.nu{suffix}",)}


def _branch(param_dim: int, group: dict) -> str:
    return "mars" if group["optimize_1d"] or param_dim >= 2 else "adamw"


def _mars_group(lr=3e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0, gamma=0.025, mars_type="adamw",
                optimize_1d=False, lr_1d_factor=1.0, betas_1d=None, caution=False):
    """``fo.timm.mars`` from a param group in timm's keys."""
    return fo.timm.mars(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, gamma=gamma, mars_type=mars_type,
                        optimize_1d=optimize_1d, lr_1d_factor=lr_1d_factor, betas_1d=betas_1d, caution=caution)


class Mars(_TorchCompatible):
    """``timm.optim.Mars`` on the functional engine (``fo.timm.mars``), with timm's
    signature, group keys (``betas_1d`` set to ``betas`` when None, as timm) and per-param
    state (``step`` as a Python int, ``exp_avg``, ``last_grad``, ``exp_avg_sq``; zeros for
    ``mars_type="lion"``, which never updates it), so checkpoints load both ways.

    Args:
      params: an iterable of tensors or of param-group dicts.
      lr: learning rate >= 0. Default 3e-3.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.99).
      eps: added to Adam's denominator, >= 0. Default 1e-8.
      weight_decay: added to the update (times the param) before the lr, >= 0. Default 0.
      gamma: weight of the gradient difference in the corrected gradient. Default 0.025.
      mars_type: ``"adamw"`` or ``"lion"`` (ValueError otherwise; timm asserts). Default ``"adamw"``.
      optimize_1d: MARS also for params with fewer than two dims (else AdamW). Default False.
      lr_1d_factor: lr factor of the AdamW fallback. Default 1.
      betas_1d: betas of the AdamW fallback; None (default): ``betas``.
      caution: Cautious Optimizers' mask. Default False.

    Invalid values raise ValueError with timm's message followed by the rule naming the
    argument. The math is ``fo.timm.mars``'s; for compiled steps use
    ``FunctionalOptimizer(params, fo.timm.mars, compile=True, ...)`` (same state names).

    References:
      Yuan et al., *MARS: Unleashing the Power of Variance Reduction for Training Large
      Models*, 2024, arXiv:2411.10438.

    Example:
      >>> import torch
      >>> from adapters.timm import Mars
      >>> w = torch.nn.Parameter(torch.ones(2, 2))
      >>> opt = Mars([w], lr=0.1, mars_type="lion")
      >>> w.grad = torch.tensor([[3.0, -1.0], [0.0, 2.0]])
      >>> opt.step()
      >>> w.detach(), list(opt.state_dict()["state"][0])
      (tensor([[0.9000, 1.1000],
              [1.0000, 0.9000]]), ['step', 'exp_avg', 'last_grad', 'exp_avg_sq'])
    """

    def __init__(
            self,
            params: ParamsT,
            lr: float = 3e-3,
            betas: Tuple[float, float] = (0.9, 0.99),
            eps: float = 1e-8,
            weight_decay: float = 0.,
            gamma: float = 0.025,
            mars_type: str = "adamw",
            optimize_1d: bool = False,
            lr_1d_factor: float = 1.0,
            betas_1d: Optional[Tuple[float, float]] = None,
            caution: bool = False
    ):
        reject_below(lr, 0.0, f"Invalid learning rate: {lr}", "lr must be >= 0")
        reject_below(eps, 0.0, f"Invalid epsilon value: {eps}", "eps must be >= 0")
        for i in (0, 1):
            reject(not 0.0 <= betas[i] < 1.0, f"Invalid beta parameter at index {i}: {betas[i]}",
                   f"betas[{i}] must be in [0, 1)")
        reject(mars_type not in ("adamw", "lion"), "MARS type not supported",
               f"mars_type must be 'adamw' or 'lion', got {mars_type!r}")
        self._setup(params, _mars_group, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, mars_type=mars_type, gamma=gamma,
            optimize_1d=optimize_1d, lr_1d_factor=lr_1d_factor, betas_1d=betas_1d or betas, caution=caution), False)

    def _export_entry(self, entry: Entry) -> Entry:
        exp_avg = next((entry[n] for n in ("ScaleByAdamState.mu", "EmaState.ema", "ScaleByAdamState.mu#2")
                        if n in entry), None)
        if exp_avg is None:
            return {}
        if "MarsGradientCorrectionState.count" in entry:
            names = _names("mars", "lion" if "EmaState.ema" in entry else "adamw")
        else:  # the fallback's names are numbered when the MARS branch runs Adam too
            names = _names("adamw", "adamw" if "ScaleByAdamState.mu#2" in entry else "lion")
        count = entry[names["step"][0]]
        if int(count) == 0:
            return {}  # timm creates a param's state at its first gradient
        exp_avg = entry[names["exp_avg"][0]]
        exp_avg_sq = entry[names["exp_avg_sq"][0]] if names["exp_avg_sq"] else torch.zeros_like(exp_avg)
        return {"step": int(count), "exp_avg": exp_avg, "last_grad": entry[names["last_grad"][0]],
                "exp_avg_sq": exp_avg_sq}

    def _import_entry(self, entry: Entry) -> Entry:
        entry = dict(entry)
        mark = entry.pop(_MARK, None)
        if not entry:
            return {}
        if mark is None:  # no param at hand: its dims are the moments'
            like = next((entry[key] for key in ("exp_avg", "last_grad", "exp_avg_sq") if key in entry), None)
            if like is None:
                return {}
            mark = (_branch(torch.as_tensor(like).dim(), self.defaults), self.defaults["mars_type"])
        branch, mars_type = mark
        out = {}
        for key, names in _names(branch, mars_type).items():
            value = entry.get(key)
            if value is None:
                continue
            for name in names:
                out[name] = torch.as_tensor(value).to(torch.int32) if key == "step" else value
        return out

    def _assign_entry(self, param: torch.Tensor, entry: Optional[Entry]) -> None:
        """``optimizer.state[param] = entry``: imported for the branch of param's group."""
        where = self._locate(param)
        if entry is not None and where is not None:
            group = self.param_groups[where[0]]
            entry = {**entry, _MARK: (_branch(param.dim(), group), group["mars_type"])}
        super()._assign_entry(param, entry)

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Load a state_dict of timm's ``Mars`` (or of this class): each param's state goes
        to the branch its saved group's options and its dims select."""
        state = dict(state_dict["state"])
        for saved, group in zip(state_dict["param_groups"], self.param_groups):
            for idx, param in zip(saved["params"], group["params"]):
                key = idx if idx in state else str(idx)
                if state.get(key):
                    state[key] = {**state[key], _MARK: (_branch(param.dim(), saved), saved["mars_type"])}
        super().load_state_dict({**state_dict, "state": state})
