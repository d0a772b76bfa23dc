"""Wrappers that apply an inner transform only at some steps (optax's ``_conditionality``).

The condition is evaluated every step on a 0-d int32 step counter. When it is a 0-d bool
tensor, both branches are computed and merged with ``torch.where`` (no host sync, no
Python branch on a tensor value), so the wrappers work under ``torch.compile(fullgraph=True)``
and ``torch.func``. When it is a Python bool, only the chosen branch runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from .. import steps
from ..tree import where as tree_where
from ..tree import zeros_like as tree_zeros_like
from ..base import GradientTransformation, declare, needs
from ..combine import _check_transform

__all__ = ["ConditionallyTransformState", "ConditionallyMaskState", "conditionally_transform",
           "conditionally_mask"]

_INT32_MAX = 2 ** 31 - 1


class ConditionallyTransformState(NamedTuple):
    """State of :func:`conditionally_transform` (optax's field order)."""

    inner_state: Any  # the inner transform's state (unchanged on steps where it is not applied)
    step: torch.Tensor  # 0-d int32: number of update calls so far (saturates at 2**31 - 1)


class ConditionallyMaskState(NamedTuple):
    """State of :func:`conditionally_mask` (optax's field order)."""

    step: torch.Tensor  # 0-d int32: number of update calls so far (saturates at 2**31 - 1)
    inner_state: Any  # the inner transform's state (unchanged on steps where it is not applied)


def safe_increment(count: torch.Tensor) -> torch.Tensor:
    """``count + 1``, saturating at the largest int32 (optax's ``numerics.safe_increment``)."""
    return count + (count < _INT32_MAX).to(count.dtype)


def _condition(should_transform_fn: Callable[..., Any], step: torch.Tensor,
               kwargs: dict[str, Any]) -> bool | torch.Tensor:
    cond = should_transform_fn(step, **kwargs)
    if isinstance(cond, bool):
        return cond
    if isinstance(cond, torch.Tensor):
        if cond.numel() != 1:
            raise ValueError("should_transform_fn must return a Python bool or a 0-d bool tensor, "
                             f"got a tensor of shape {tuple(cond.shape)}")
        cond = cond.reshape(())
        return cond if cond.dtype == torch.bool else cond != 0
    raise TypeError("should_transform_fn must return a Python bool or a 0-d bool tensor, "
                    f"got {type(cond).__name__}")


def _forwarded(extra: dict[str, Any], forward_extra_args: bool) -> dict[str, Any]:
    # ``donate`` is an execution hint for transforms, not a user argument: never forwarded
    return {n: v for n, v in extra.items() if n != "donate"} if forward_extra_args else {}


def _check_args(inner: Any, should_transform_fn: Any, forward_extra_args: Any) -> None:
    _check_transform("inner", inner)
    if not callable(should_transform_fn):
        raise TypeError(f"should_transform_fn must be callable, got {type(should_transform_fn).__name__}")
    if not isinstance(forward_extra_args, bool):
        raise TypeError(f"forward_extra_args must be a bool, got {type(forward_extra_args).__name__}")


def _conditional(inner: GradientTransformation, should_transform_fn: Callable[..., Any],
                 forward_extra_args: bool, mask: bool) -> tuple[Callable, Callable]:
    """The shared (init, update) pair; ``mask`` zeroes the updates where not applied."""

    def rejected(updates):
        if not mask:
            return updates
        return tree_zeros_like(updates)

    def run(updates, inner_state, step, params, extra):
        cond = _condition(should_transform_fn, step, _forwarded(extra, forward_extra_args))
        if isinstance(cond, bool):  # known on the host: run only the chosen branch
            if cond:
                return inner.update(updates, inner_state, params, **extra)
            return rejected(updates), inner_state
        # Both branches, merged by torch.where. The inner update must not overwrite the
        # incoming updates or its state: they are the result when the condition is false.
        new_updates, new_state = inner.update(updates, inner_state, params, **{**extra, "donate": False})
        out = tree_where(cond, new_updates, 0.0 if mask else updates, name="updates tree")
        return out, tree_where(cond, new_state, inner_state, name="inner state")

    return run


def conditionally_transform(inner: GradientTransformation,
                            should_transform_fn: Callable[..., bool | torch.Tensor],
                            forward_extra_args: bool = False) -> GradientTransformation:
    """Apply ``inner`` only at steps where ``should_transform_fn(step)`` is true.

    ``step`` is a 0-d int32 tensor counting the previous update calls (0 at the first).
    Where the condition is true the result is ``inner.update(...)``; where it is false
    the updates pass through unchanged and the inner state is kept as it was (optax's
    semantics). A tensor condition runs ``inner`` every step and selects with
    ``torch.where`` (so the inner update is not donated; nothing is synced to the host);
    a Python bool runs only the chosen branch.

    Args:
      inner: the wrapped transform.
      should_transform_fn: ``fn(step, **extra) -> bool`` returning a Python bool or a 0-d
        bool tensor (e.g. ``lambda step: step >= 100``).
      forward_extra_args: also pass the extra keyword arguments of ``update`` (except
        ``donate``) to ``should_transform_fn``. Default False.

    Example:
      >>> import torch, functional_optim as fo
      >>> from functional_optim.wrappers.conditional import conditionally_transform
      >>> tx = conditionally_transform(fo.scale(10.0), lambda step: step % 2 == 1)
      >>> state = tx.init(torch.zeros(1))
      >>> u, state = tx.update(torch.ones(1), state)  # step 0: passed through
      >>> u2, state = tx.update(torch.ones(1), state)  # step 1: scaled
      >>> u, u2, state.step
      (tensor([1.]), tensor([10.]), tensor(2, dtype=torch.int32))
    """
    _check_args(inner, should_transform_fn, forward_extra_args)
    run = _conditional(inner, should_transform_fn, forward_extra_args, mask=False)

    def init_fn(params):
        return ConditionallyTransformState(inner_state=inner.init(params),
                                           step=steps.zero_count(steps.first_device(params)))

    def update_fn(updates, state, params=None, **extra):
        out, inner_state = run(updates, state.inner_state, state.step, params, extra)
        return out, ConditionallyTransformState(inner_state, safe_increment(state.step))

    tx = GradientTransformation(init_fn, update_fn)
    return declare(tx, needs(inner))


def conditionally_mask(inner: GradientTransformation,
                       should_transform_fn: Callable[..., bool | torch.Tensor],
                       forward_extra_args: bool = False) -> GradientTransformation:
    """Apply ``inner`` where ``should_transform_fn(step)`` is true, else emit zero updates.

    Like :func:`conditionally_transform`, except that on steps where the condition is
    false the updates are **zeros** (the params do not move) and the inner state is kept
    unchanged. None update leaves stay None.

    Args:
      inner: the wrapped transform.
      should_transform_fn: ``fn(step, **extra) -> bool`` returning a Python bool or a 0-d
        bool tensor; ``step`` is a 0-d int32 count of previous update calls.
      forward_extra_args: also pass the extra keyword arguments of ``update`` (except
        ``donate``) to ``should_transform_fn``. Default False.

    Example:
      >>> import torch, functional_optim as fo
      >>> from functional_optim.wrappers.conditional import conditionally_mask
      >>> tx = conditionally_mask(fo.sgd(lr=0.1), lambda step: step >= 1)
      >>> state = tx.init(torch.zeros(2))
      >>> u, state = tx.update(torch.ones(2), state)  # step 0: masked
      >>> u2, state = tx.update(torch.ones(2), state)
      >>> u, u2
      (tensor([0., 0.]), tensor([-0.1000, -0.1000]))
    """
    _check_args(inner, should_transform_fn, forward_extra_args)
    run = _conditional(inner, should_transform_fn, forward_extra_args, mask=True)

    def init_fn(params):
        return ConditionallyMaskState(step=steps.zero_count(steps.first_device(params)),
                                      inner_state=inner.init(params))

    def update_fn(updates, state, params=None, **extra):
        out, inner_state = run(updates, state.inner_state, state.step, params, extra)
        return out, ConditionallyMaskState(safe_increment(state.step), inner_state)

    tx = GradientTransformation(init_fn, update_fn)
    return declare(tx, needs(inner))

