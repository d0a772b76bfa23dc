"""``apply_if_finite``: skip steps whose updates hold NaN or Inf, without a host sync."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation, Needs, declare, needs_of_all
from ..tree import all_finite as tree_all_finite
from ..tree import select
from ..tree import where as tree_where

__all__ = ["ApplyIfFiniteState", "apply_if_finite", "all_finite", "select_tree", "zeros_where_not"]


class ApplyIfFiniteState(NamedTuple):
    """State of :func:`apply_if_finite`."""

    notfinite_count: torch.Tensor  # 0-d int32: consecutive non-finite steps so far (0 after a finite one)
    last_finite: torch.Tensor  # 0-d bool: whether the last incoming updates were all finite
    total_notfinite: torch.Tensor  # 0-d int32: non-finite steps since init
    inner_state: Any  # state of the inner transform (unchanged by a rejected step)


def all_finite(tree: Any) -> torch.Tensor:
    """A 0-d bool tensor: True when no leaf of ``tree`` holds a NaN or an Inf (None leaves
    are skipped; True for a tree without tensors). No host sync. (``fo.tree.all_finite``.)

    Example:
      >>> import torch
      >>> from functional_optim.wrappers.finite import all_finite
      >>> all_finite({"a": torch.ones(2), "b": None}), all_finite([torch.tensor([1.0, float("nan")])])
      (tensor(True), tensor(False))
    """
    return tree_all_finite(tree)


def select_tree(cond: torch.Tensor, new: Any, old: Any, *, name: str = "inner state") -> Any:
    """``torch.where(cond, new, old)`` leaf by leaf over two trees of the same structure
    (``fo.tree.where``): where ``cond`` is False the result holds ``old`` bit for bit.

    Example:
      >>> import torch
      >>> from functional_optim.wrappers.finite import select_tree
      >>> select_tree(torch.tensor(False), {"m": torch.tensor([float("nan")])}, {"m": torch.zeros(1)})
      {'m': tensor([0.])}
    """
    return tree_where(cond, new, old, name=name)


def zeros_where_not(cond: torch.Tensor, updates: Any, out: Any = None) -> Any:
    """``u`` where ``cond`` else zeros of ``u``'s dtype, leaf by leaf (NaN or Inf in ``u``
    do not leak), written into the matching leaves of ``out`` (donated buffers) when given."""
    sel = select(updates) if out is None else select(updates, out=out)
    return sel.rebuild(k.where(cond, sel.updates, 0.0, out=None if out is None else sel["out"]))


def apply_if_finite(inner: GradientTransformation, max_consecutive_errors: int) -> GradientTransformation:
    """Apply ``inner`` only when the incoming updates are all finite (optax's rule).

    A step whose incoming updates hold a NaN or an Inf returns zero updates (of the dtype
    ``inner`` would return) and leaves the inner state bit for bit as it was; the counts
    in state record it. After more than ``max_consecutive_errors`` consecutive non-finite
    steps the update is applied anyway (``notfinite_count > max_consecutive_errors``), so
    a run that keeps producing NaN does not stall silently. Decided with ``torch.where``
    on 0-d tensors: no host sync, one graph under ``torch.compile``.

    The inner update runs at every step (its result is discarded when rejected) and is
    never donated: a donated inner update would overwrite the inner state that a
    rejected step must keep. With ``donate=True`` the incoming updates' buffers receive
    the output.

    Args:
      inner: the transform to guard.
      max_consecutive_errors: the number of consecutive non-finite steps that are
        skipped (an int >= 0); the next one is applied.

    Example:
      >>> import torch, functional_optim as fo
      >>> from functional_optim.wrappers.finite import apply_if_finite
      >>> opt = apply_if_finite(fo.sgd(lr=0.1), max_consecutive_errors=2)
      >>> params = {"w": torch.ones(2)}
      >>> state = opt.init(params)
      >>> updates, state = opt.update({"w": torch.tensor([1.0, float("inf")])}, state, params)
      >>> updates["w"], state.notfinite_count, state.last_finite
      (tensor([0., 0.]), tensor(1, dtype=torch.int32), tensor(False))
    """
    if not isinstance(inner, GradientTransformation):
        raise TypeError(f"inner must be a GradientTransformation, got {type(inner).__name__}")
    if isinstance(max_consecutive_errors, bool) or not isinstance(max_consecutive_errors, int):
        raise TypeError(f"max_consecutive_errors must be an int, got {type(max_consecutive_errors).__name__}")
    if max_consecutive_errors < 0:
        raise ValueError(f"Invalid max_consecutive_errors: {max_consecutive_errors} "
                         "(expected max_consecutive_errors >= 0)")

    def init_fn(params):
        device = steps.first_device(params)
        return ApplyIfFiniteState(
            notfinite_count=steps.zero_count(device),
            last_finite=torch.ones((), dtype=torch.bool, device=device),
            total_notfinite=steps.zero_count(device),
            inner_state=inner.init(params))

    def update_fn(updates, state, params=None, **extra):
        if not isinstance(state, ApplyIfFiniteState):
            raise ValueError("state must be an ApplyIfFiniteState (made by this transform's init), "
                             f"got {type(state).__name__}")
        donate = bool(extra.pop("donate", False))
        finite = tree_all_finite(updates).to(state.notfinite_count.device)
        notfinite_count = torch.where(finite, 0, state.notfinite_count + 1).to(steps.COUNT_DTYPE)
        apply = finite | (notfinite_count > max_consecutive_errors)
        new_updates, new_inner = inner.update(updates, state.inner_state, params, **extra)
        inner_state = select_tree(apply, new_inner, state.inner_state)
        out = zeros_where_not(apply, new_updates, updates if donate else None)
        return out, ApplyIfFiniteState(
            notfinite_count=notfinite_count,
            last_finite=finite,
            total_notfinite=state.total_notfinite + (~finite).to(steps.COUNT_DTYPE),
            inner_state=inner_state)

    return declare(GradientTransformation(init_fn, update_fn), needs_of_all(inner, at_least=Needs.GLOBAL))
