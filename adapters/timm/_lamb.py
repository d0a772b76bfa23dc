"""``timm.optim.Lamb`` on the functional engine (``fo.timm.lamb``).

No ``from __future__ import annotations`` here: the signature's annotations are timm's
objects, so ``inspect.signature(Lamb)`` prints exactly as timm's does.
"""

import functools
from typing import Any, Optional, Tuple

import torch
from torch.optim.optimizer import ParamsT

import functional_optim as fo
from functional_optim.hyperparams import concrete
from functional_optim.transforms.layerwise_adaptive import ScaleByLambMomentsState, divide_by_global_norm

from ..optimizer import Entry
from ..group_step import GroupStepped
from ..torch_optim import _torch_step
__all__ = ["Lamb"]


def reject_below(value: Any, low: float, message: str, rule: str) -> None:
    """timm's ValueError ``message`` (first, so code matching on it keeps working), then the
    rule naming the argument, when ``value < low`` (shared by the timm classes here)."""
    v = concrete(value)
    if v is not None and not v >= low:
        raise ValueError(f"{message} ({rule})")


def max_lr_snapshot(lr: Any, corrected_weight_decay: bool) -> float:
    """timm's ``_max_lr_snapshot``: the constructor's lr as a float, > 0 when corrected."""
    max_lr = float(lr.detach()) if isinstance(lr, torch.Tensor) else float(lr)
    if corrected_weight_decay and max_lr <= 0:
        raise ValueError(f"Corrected weight decay requires a positive max lr, got {max_lr}. Construct the "
                         "optimizer with the peak lr. (lr must be > 0 with corrected_weight_decay)")
    return max_lr

_M = "ScaleByLambMomentsState."


@functools.wraps(fo.timm.lamb)
def _lamb_of_class(**kwargs: Any) -> fo.GradientTransformation:
    """``fo.timm.lamb`` whose global-norm clipping divides by the divisor ``Lamb.step``
    computes over every param group (``clip_divisor``): timm clips with the optimizer's
    default ``max_grad_norm`` over all groups, ignoring the groups' own values."""
    inner = fo.timm.lamb(**{**kwargs, "max_grad_norm": None})
    return fo.chain(divide_by_global_norm(None), inner)


class Lamb(GroupStepped):
    """``timm.optim.Lamb`` on the functional engine (``fo.timm.lamb``), with timm's
    signature, checks, update and state_dict format (checkpoints load both ways).

    Per-param state ``exp_avg`` and ``exp_avg_sq``; each param group holds timm's ``step``
    (a 0-d float tensor, counted even when the group has no gradient) and
    ``max_lr_snapshot``. The global gradient norm of ``max_grad_norm`` is computed once per
    ``step()`` over the gradients of every group with ``defaults['max_grad_norm']``, as
    timm does; ``p.grad`` is left unchanged.

    Args:
      params: an iterable of tensors or of param-group dicts.
      lr: learning rate >= 0. Default 1e-3.
      bias_correction: bias-correct the moments. Default True.
      betas: ``(beta1, beta2)``, each in [0, 1) (timm does not check them; we do). Default (0.9, 0.999).
      eps: added to the denominator, >= 0. Default 1e-6.
      weight_decay: >= 0. Default 0.01.
      grad_averaging: weight the gradient by ``1 - beta1`` in the first moment. Default True.
      max_grad_norm: global-norm clipping threshold, None for none. Default 1.0.
      trust_clip: clip the trust ratio at 1 (LAMBC). Default False.
      always_adapt: apply the trust ratio also at zero weight decay. Default False.
      caution: Cautious Optimizers' mask. Default False.
      decoupled_decay: decay the weights directly. Default False.
      corrected_weight_decay: decoupled decay scaled by ``lr**2 / max_lr``. Default False.
      foreach: accepted and ignored (the engine chooses). Default None.

    Invalid values raise ValueError with timm's message followed by the rule and the
    argument's name. The math is ``fo.timm.lamb``'s (see there); for compiled steps use
    ``FunctionalOptimizer(params, fo.timm.lamb, compile=True, ...)`` (same state names;
    there the clipping is per group).

    Example:
      >>> import torch
      >>> from adapters.timm import Lamb
      >>> w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
      >>> opt = Lamb([w], lr=0.1)
      >>> w.grad = torch.tensor([0.5, -0.5])
      >>> opt.step()
      >>> w.detach(), opt.state_dict()["param_groups"][0]["step"]
      (tensor([2.6342, 4.3409]), tensor(1.))
    """

    _state_keys = {"exp_avg": (_M + "mu",), "exp_avg_sq": (_M + "nu",)}

    _state_cls, _count_key = ScaleByLambMomentsState, _M + "count"  # the group's step

    def __init__(
            self,
            params: ParamsT,
            lr: float = 1e-3,
            bias_correction: bool = True,
            betas: Tuple[float, float] = (0.9, 0.999),
            eps: float = 1e-6,
            weight_decay: float = 0.01,
            grad_averaging: bool = True,
            max_grad_norm: Optional[float] = 1.0,
            trust_clip: bool = False,
            always_adapt: bool = False,
            caution: bool = False,
            decoupled_decay: bool = False,
            corrected_weight_decay: bool = False,
            foreach: Optional[bool] = None,
    ):
        reject_below(lr, 0.0, f"Invalid learning rate: {lr}", "lr must be >= 0")
        reject_below(eps, 0.0, f"Invalid epsilon: {eps}", "eps must be >= 0")
        reject_below(weight_decay, 0.0, f"Invalid weight_decay: {weight_decay}", "weight_decay must be >= 0")
        snapshot = max_lr_snapshot(lr, corrected_weight_decay)
        self._setup(params, _lamb_of_class, dict(
            lr=lr, bias_correction=bias_correction, betas=betas, eps=eps, weight_decay=weight_decay,
            grad_averaging=grad_averaging, max_grad_norm=max_grad_norm, trust_clip=trust_clip,
            always_adapt=always_adapt, caution=caution, decoupled_decay=decoupled_decay,
            corrected_weight_decay=corrected_weight_decay, max_lr_snapshot=snapshot, foreach=foreach), False)

    # -- stepping ------------------------------------------------------------------------

    def _clip_divisor(self) -> Optional[torch.Tensor]:
        """timm's ``max(1, G / max_grad_norm)``, ``G`` the norm of every group's gradients."""
        max_grad_norm = self.defaults["max_grad_norm"]
        if max_grad_norm is None:
            return None
        grads = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Lamb does not support sparse gradients, consider SparseAdam instead.")
                grads.append(p.grad)
        if not grads:
            return None
        norms = fo.kernels.norms(grads)
        global_norm = torch.linalg.vector_norm(torch.stack(norms))
        return (global_norm / max_grad_norm).clamp_(min=1.0)

    # -- timm's state_dict: per-param moments, the step count in the param group ------------

    def _export_entry(self, entry: Entry) -> Entry:
        if _M + "leaf_count" not in entry or int(entry[_M + "leaf_count"]) == 0:
            return {}  # timm creates a param's state at its first gradient
        return {"exp_avg": entry[_M + "mu"], "exp_avg_sq": entry[_M + "nu"]}

    def _import_entry(self, entry: Entry) -> Entry:
        out = {}
        step = entry.get("step")
        if step is not None:
            out[_M + "count"] = torch.as_tensor(step).to(torch.int32)
        if entry.get("exp_avg") is not None:
            out[_M + "mu"] = entry["exp_avg"]
            out[_M + "leaf_count"] = torch.as_tensor(1 if step is None else step).to(torch.int32)
        if entry.get("exp_avg_sq") is not None:
            out[_M + "nu"] = entry["exp_avg_sq"]
        return out

    def _export_step(self, count: Any) -> Any:
        return _torch_step(count)
