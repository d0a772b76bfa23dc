"""Transforms that multiply updates by a factor: constants, schedules, learning rates, signs."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation, ScalarOrSchedule, Schedule, init_empty_state, mark_elementwise
from ..hyperparams import check_number, check_range, is_schedule, value_at
from ..tree import select


class ScaleByScheduleState(NamedTuple):
    """State of :func:`scale_by_schedule`."""

    count: torch.Tensor  # 0-d int32: updates applied so far (the schedule's argument)


def _multiply(updates: Any, factor: Any, donate: bool) -> Any:
    sel = select(updates)
    return sel.rebuild(k.mul(sel.updates, factor, donate=donate))


def scale(step_size: float | torch.Tensor) -> GradientTransformation:
    """Multiply updates by ``step_size``.

    Args:
      step_size: a number or a 0-d tensor (read at every update, so a tensor may be
        changed in place between steps).

    Example:
      >>> import torch, functional_optim as fo
      >>> fo.scale(-0.1).update({"w": torch.ones(2)}, fo.EmptyState())[0]["w"]
      tensor([-0.1000, -0.1000])
    """
    check_number("step_size", step_size)


    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        return _multiply(updates, step_size, donate), state

    return _constant(mark_elementwise(GradientTransformation(init_empty_state, update_fn)), step_size)


def _constant(tx: GradientTransformation, factor: Any) -> GradientTransformation:
    # a multiplication by a Python number: ``fo.combine.split_final_scale`` may fold it
    # into the apply (``p.add_(u, alpha=factor)``)
    if isinstance(factor, (int, float)) and not isinstance(factor, bool):
        tx.update.constant_factor = float(factor)
    return tx


def scale_by_schedule(step_size_fn: Schedule) -> GradientTransformation:
    """Multiply updates by ``step_size_fn(count)``, ``count`` starting at 0 (a 0-d float64
    tensor holding an integer, see ``hyperparams.value_at``).

    Args:
      step_size_fn: a function of the 0-d int32 step count returning a number or 0-d tensor.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_schedule(lambda count: 0.5 ** count)
      >>> u, state = tx.update({"w": torch.ones(1)}, tx.init({"w": torch.zeros(1)}))
      >>> u["w"], state.count
      (tensor([1.]), tensor(1, dtype=torch.int32))
    """
    if not is_schedule(step_size_fn):
        raise TypeError(f"step_size_fn must be callable, got {type(step_size_fn).__name__}")

    def init_fn(params):
        return ScaleByScheduleState(count=steps.zero_count(steps.first_device(params)))

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        factor = value_at(step_size_fn, state.count)
        updates = _multiply(updates, factor, donate)
        return updates, ScaleByScheduleState(count=state.count + 1)

    return mark_elementwise(GradientTransformation(init_fn, update_fn))


def scale_by_learning_rate(learning_rate: ScalarOrSchedule, *, flip_sign: bool = True) -> GradientTransformation:
    """Multiply updates by ``-learning_rate`` (or ``+`` with ``flip_sign=False``).

    Args:
      learning_rate: a number, a 0-d tensor (changeable in place between steps, and
        differentiable), or a schedule ``count -> lr``.
      flip_sign: negate, so that adding the updates descends (default True).

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_learning_rate(0.1)
      >>> tx.update({"w": torch.ones(1)}, tx.init({"w": torch.zeros(1)}))[0]["w"]
      tensor([-0.1000])
    """
    check_range("learning_rate", learning_rate, 0.0, schedule_ok=True)
    sign = -1 if flip_sign else 1
    if is_schedule(learning_rate):
        return scale_by_schedule(lambda count: sign * learning_rate(count))


    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        # the sign is applied here, not at construction, so an lr tensor changed in
        # place between steps takes effect
        factor = -learning_rate if flip_sign else learning_rate
        return _multiply(updates, factor, donate), state

    tx = mark_elementwise(GradientTransformation(init_empty_state, update_fn))
    return _constant(tx, -learning_rate if flip_sign and not isinstance(learning_rate, torch.Tensor)
                     else learning_rate)


def scale_by_sign() -> GradientTransformation:
    """Replace each update by its sign (per real/imaginary component for complex).

    Example:
      >>> import torch, functional_optim as fo
      >>> fo.scale_by_sign().update(torch.tensor([-2.0, 0.0, 3.0]), fo.EmptyState())[0]
      tensor([-1.,  0.,  1.])
    """


    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        sel = select(updates)
        return sel.rebuild(k.sign(sel.updates, donate=donate)), state

    return mark_elementwise(GradientTransformation(init_empty_state, update_fn))
