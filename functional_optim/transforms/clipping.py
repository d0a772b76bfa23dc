"""Transforms that bound the size of updates."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import kernels as k
from .. import steps
from ..base import EmptyState, GradientTransformation, mark_elementwise
from ..hyperparams import check_range, concrete
from ..tree import leaves, select


class ClipByGlobalNormState(NamedTuple):
    """State of :func:`clip_by_global_norm`."""

    global_norm: torch.Tensor  # 0-d float: the global norm of the last updates, before clipping


def clip(max_delta: float | torch.Tensor) -> GradientTransformation:
    """Clip each update element to ``[-max_delta, max_delta]`` (per real/imaginary part).

    Args:
      max_delta: a non-negative number or 0-d tensor.

    Example:
      >>> import torch, functional_optim as fo
      >>> fo.clip(1.0).update(torch.tensor([-3.0, 0.5, 2.0]), fo.EmptyState())[0]
      tensor([-1.0000,  0.5000,  1.0000])
    """
    check_range("max_delta", max_delta, 0.0)

    def init_fn(params):
        del params
        return EmptyState()

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        sel = select(updates)
        return sel.rebuild(k.clamp(sel.updates, -max_delta, max_delta, donate=donate)), state

    return mark_elementwise(GradientTransformation(init_fn, update_fn))


def _norm_dtype(tree) -> torch.dtype:
    dtype = torch.float32
    for leaf in leaves(tree):
        real = leaf.real if leaf.is_complex() else leaf
        dtype = torch.promote_types(dtype, real.dtype)
    return dtype


def clip_by_global_norm(max_norm: float | torch.Tensor) -> GradientTransformation:
    """Rescale all updates together so their global 2-norm is at most ``max_norm``.

    Updates are multiplied by ``min(1, max_norm / global_norm)`` (optax's rule; no
    epsilon). The norm before clipping is kept in state as ``global_norm``, so a user can
    log it: ``fo.tree.get(state, "global_norm")``. Norms accumulate in float32 at least.

    Args:
      max_norm: a positive number or 0-d tensor.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.clip_by_global_norm(1.0)
      >>> params = {"a": torch.zeros(1), "b": torch.zeros(1)}
      >>> u, state = tx.update({"a": torch.tensor([3.0]), "b": torch.tensor([4.0])}, tx.init(params))
      >>> u["a"], state.global_norm
      (tensor([0.6000]), tensor(5.))
    """
    check_range("max_norm", max_norm, 0.0)
    if concrete(max_norm) == 0.0:
        raise ValueError("Invalid max_norm: 0.0 (expected max_norm > 0)")

    def init_fn(params):
        return ClipByGlobalNormState(
            global_norm=torch.zeros((), dtype=_norm_dtype(params), device=steps.first_device(params)))

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        sel = select(updates)
        if not len(sel):
            return updates, state
        norm = k.global_norm(sel.updates, state.global_norm.dtype)
        # max_norm / max(norm, max_norm) is exactly 1 below the threshold and stays finite
        # (and differentiable) at norm == 0
        factor = max_norm / torch.maximum(norm, torch.as_tensor(max_norm, dtype=norm.dtype, device=norm.device))
        clipped = k.mul(sel.updates, factor, donate=donate)
        return sel.rebuild(clipped), ClipByGlobalNormState(global_norm=norm)

    return GradientTransformation(init_fn, update_fn)
