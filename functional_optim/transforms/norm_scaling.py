"""Transforms that rescale each leaf's update by a ratio of norms (LARS/LAMB trust ratios)."""

from __future__ import annotations

import torch

from .. import kernels as k
from ..base import GradientTransformation, Needs, declare, init_empty_state
from ..hyperparams import check_range
from ..tree import select
from .clipping import _norm_dtype, _real_dtype


def _safe_norm(norm: torch.Tensor, min_norm: float | torch.Tensor) -> torch.Tensor:
    # max(norm, min_norm) whose gradient is 0 when the norm is at or below min_norm
    # (optax's safe_norm; torch's norm already has a zero, not NaN, gradient at 0)
    return torch.where(norm <= min_norm, torch.as_tensor(min_norm, dtype=norm.dtype, device=norm.device), norm)


def scale_by_trust_ratio(min_norm: float | torch.Tensor = 0.0, trust_coefficient: float | torch.Tensor = 1.0,
                         eps: float | torch.Tensor = 0.0) -> GradientTransformation:
    """Scale each leaf's update by its trust ratio ``||p|| / ||u||`` (LARS, LAMB, Fromage).

    Per leaf, with ``||.||`` the 2-norm over the whole tensor floored at ``min_norm``:
    ``u = u * trust_coefficient * ||p|| / (||u|| + eps)``, and ``u`` unchanged (ratio 1)
    when either norm is 0 (a zero-initialised param or a zero update). Norms accumulate in
    float32 at least. Needs ``params``.

    Args:
      min_norm: floor of both norms, >= 0. Default 0 (no floor).
      trust_coefficient: multiplier of the ratio, >= 0. Default 1.
      eps: added to the update norm in the denominator, >= 0. Default 0.

    Example:
      >>> import torch, functional_optim as fo
      >>> from functional_optim.transforms.norm_scaling import scale_by_trust_ratio
      >>> tx = scale_by_trust_ratio()
      >>> params = {"w": torch.tensor([3.0, 4.0]), "b": torch.zeros(2)}
      >>> u, _ = tx.update({"w": torch.tensor([0.0, 0.5]), "b": torch.ones(2)}, tx.init(params), params)
      >>> u["w"], u["b"]  # ||p|| / ||u|| = 5 / 0.5; b has a zero param norm
      (tensor([0., 5.]), tensor([1., 1.]))
    """
    check_range("min_norm", min_norm, 0.0)
    check_range("trust_coefficient", trust_coefficient, 0.0)
    check_range("eps", eps, 0.0)


    def ratio(p_norm: torch.Tensor, u_norm: torch.Tensor) -> torch.Tensor:
        p_norm, u_norm = _safe_norm(p_norm, min_norm), _safe_norm(u_norm, min_norm)
        zero = (p_norm == 0) | (u_norm == 0)
        one = torch.ones((), dtype=p_norm.dtype, device=p_norm.device)
        # the denominator is made safe too, so no inf/NaN reaches a gradient through where
        denom = torch.where(zero, one, u_norm + eps)
        return torch.where(zero, one, trust_coefficient * p_norm / denom)

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del extra
        if params is None:
            raise ValueError("scale_by_trust_ratio needs params: call update(updates, state, params)")
        sel = select(updates, params=params)
        us, ps = sel.updates, sel["params"]
        if not us:
            return updates, state
        dtype = _norm_dtype(us + ps)
        ratios = k.leafwise(ratio, k.norms(ps, dtype), k.norms(us, dtype))
        ratios = [r.to(_real_dtype(u)) for r, u in zip(ratios, us)]
        return sel.rebuild(k.mul(us, ratios, donate=donate)), state

    return declare(GradientTransformation(init_empty_state, update_fn), Needs.PER_PARAM)
