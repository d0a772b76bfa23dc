"""Transforms that bound the size of updates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation, Needs, declare, init_empty_state, mark_elementwise
from ..hyperparams import check_range, concrete, materialize
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


    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        sel = select(updates)
        return sel.rebuild(k.clamp(sel.updates, -max_delta, max_delta, donate=donate)), state

    return mark_elementwise(GradientTransformation(init_empty_state, update_fn))


def _norm_dtype(tree) -> torch.dtype:
    return k.norm_dtype(leaves(tree))


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
        # computed once per step when compiled, not per vector of the update loop
        clipped = k.mul(sel.updates, materialize(factor), donate=donate)
        return sel.rebuild(clipped), ClipByGlobalNormState(global_norm=norm)

    return declare(GradientTransformation(init_fn, update_fn), Needs.GLOBAL)


# ---------------------------------------------------------------------------------
# Per-leaf clipping: block RMS and adaptive (unit-wise) clipping


def _real_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of ``x``'s components (``float32`` for ``complex64``)."""
    return x.real.dtype if x.is_complex() else x.dtype


def _cast_like(scalars: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    # a factor in the real dtype of its update: no promotion of 0-d or complex leaves
    return [s.to(_real_dtype(x)) for s, x in zip(scalars, xs)]


def clip_by_block_rms(threshold: float | torch.Tensor) -> GradientTransformation:
    """Rescale each leaf's update so its root mean square is at most ``threshold``.

    Per leaf, ``u = u / max(1, rms(u) / threshold)`` with ``rms(u) = sqrt(mean(|u|^2))``
    (a "block" is one param tensor). The RMS accumulates in float32 at least. Declares
    :attr:`Needs.PER_PARAM <functional_optim.Needs>`: runs on the adapter's flat buffers.

    Args:
      threshold: the largest RMS allowed per leaf, a positive number or 0-d tensor.

    Example:
      >>> import torch, functional_optim as fo
      >>> from functional_optim.transforms.clipping import clip_by_block_rms
      >>> tx = clip_by_block_rms(1.0)
      >>> u, _ = tx.update({"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([0.5])}, tx.init(None))
      >>> u["a"], u["b"]  # rms(a) = sqrt(12.5)
      (tensor([0.8485, 1.1314]), tensor([0.5000]))
    """
    check_range("threshold", threshold, 0.0)
    if concrete(threshold) == 0.0:
        raise ValueError("Invalid threshold: 0.0 (expected threshold > 0)")


    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        sel = select(updates)
        us = sel.updates
        if not us:
            return updates, state
        rms = k.rms(us, _norm_dtype(us))  # per segment on the adapter's flat buffers
        denoms = k.leafwise(lambda r: torch.clamp_min(r / threshold, 1.0), rms)
        return sel.rebuild(k.div(us, _cast_like(denoms, us), donate=donate)), state

    return declare(GradientTransformation(init_empty_state, update_fn), Needs.PER_PARAM)


def _unit_dims(shape: torch.Size, axis: Any) -> tuple[int, ...] | None:
    """The dimensions a unit-wise norm reduces (None: all of them) for a leaf of ``shape``."""
    ndim = len(shape)
    if axis is not None:
        dims = (axis,) if isinstance(axis, int) else tuple(axis)
        if any(not -ndim <= a < ndim for a in dims) or (ndim == 0 and dims):
            raise ValueError(f"axis {axis!r} is out of range for a leaf of shape {tuple(shape)}")
        return tuple(a % ndim for a in dims)
    if sum(1 for s in shape if s != 1) <= 1:  # scalars and vectors (unit dims squeezed)
        return None
    if ndim <= 5:  # Linear (out, in), Conv1d/2d/3d (out, in, *kernel): one unit per output
        return tuple(range(1, ndim))
    raise ValueError(f"adaptive_grad_clip has no default units for a leaf of shape {tuple(shape)} "
                     "(ndim > 5): give axis, the dimensions to reduce")


def adaptive_grad_clip(clipping: float | torch.Tensor, eps: float | torch.Tensor = 1e-3,
                       axis: int | tuple[int, ...] | None = None) -> GradientTransformation:
    """Clip each unit's update to at most ``clipping`` times the unit's param norm (AGC).

    Per unit, with ``||.||`` the 2-norm over the unit:
    ``max_norm = clipping * max(||p||, eps)``; the update is kept when
    ``||u|| < max_norm``, else scaled by ``max_norm / max(||u||, 1e-6)``
    (Brock et al., 2021; optax's and timm's rule).

    Units (``axis=None``) in **torch's layout**, where the output dimension comes first:
    a leaf with at most one dimension of size > 1 (scalars, biases, vectors) is one unit;
    otherwise each slice along dimension 0 is a unit, the norm reducing dimensions
    ``1..ndim-1`` (``Linear`` ``(out, in)``: per output row; ``ConvNd``
    ``(out, in, *kernel)``: per output filter). This is optax's rule translated from
    JAX's layouts (``(in, out)``, ``HWIO``: there the output dimension is last) and timm's
    ``adaptive_clip_grad`` rule, except that (as optax) leaves such as ``(out, 1)`` whose
    squeezed shape is 1-D are one unit (timm treats each row as a unit), and that 3-D
    leaves are torch's ``Conv1d`` ``(out, in, k)`` (optax's 3-D default, for multi-head
    JAX kernels, reduces only the first axis). Leaves of more than 5 dimensions need
    ``axis``. An explicit ``axis`` names the dimensions to reduce, as in optax.

    Args:
      clipping: the largest allowed ratio of update norm to param norm, >= 0.
      eps: floor of the param norm (so zero-initialised params still get updates), >= 0.
        Default 1e-3.
      axis: dimension(s) the norms reduce (each remaining index is a unit); None (default)
        for the layer-based rule above.

    Example:
      >>> import torch, functional_optim as fo
      >>> from functional_optim.transforms.clipping import adaptive_grad_clip
      >>> tx = adaptive_grad_clip(0.1)
      >>> params = torch.tensor([[3.0, 4.0], [0.0, 1.0]])  # Linear weight (out=2, in=2)
      >>> tx.update(torch.tensor([[6.0, 8.0], [0.01, 0.0]]), tx.init(params), params)[0]
      tensor([[0.3000, 0.4000],
              [0.0100, 0.0000]])
    """
    check_range("clipping", clipping, 0.0)
    check_range("eps", eps, 0.0)
    if axis is not None and not (isinstance(axis, int) and not isinstance(axis, bool)) and not (
            isinstance(axis, tuple) and all(isinstance(a, int) and not isinstance(a, bool) for a in axis)):
        raise TypeError(f"axis must be None, an int or a tuple of ints, got {axis!r}")
    if axis == ():
        raise ValueError("axis must name at least one dimension, got ()")


    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del extra
        if params is None:
            raise ValueError("adaptive_grad_clip needs params: call update(updates, state, params)")
        sel = select(updates, params=params)
        us, ps = sel.updates, sel["params"]
        dims = [_unit_dims(u.shape, axis) for u in us]
        g_norm = k.unit_norms(us, dims)
        p_norm = k.unit_norms(ps, dims)
        # not in place: clipping may be a batched (vmap) or differentiated tensor
        max_norm = k.mul(k.clamp(p_norm, min=eps), clipping)
        factor = k.div(max_norm, k.clamp(g_norm, min=1e-6))
        keep = [g < m for g, m in zip(g_norm, max_norm)]
        ones = [torch.ones((), dtype=f.dtype, device=f.device) for f in factor]
        factor = k.cast(k.where(keep, ones, factor), [_real_dtype(u) for u in us])
        return sel.rebuild(k.mul_real(us, factor, donate=donate)), state

    return declare(GradientTransformation(init_empty_state, update_fn), Needs.MATRIX)  # unit-wise norms
