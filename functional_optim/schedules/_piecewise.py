"""Piecewise schedules: constant steps and linear/cosine interpolation between boundaries."""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from ..base import Schedule
from ._common import check_value, finish, float_count


def _boundaries(name: str, boundaries_and_scales: Any) -> tuple[list[float], list[Any]]:
    """Sorted boundaries and their scales, validated (scales must be >= 0)."""
    if boundaries_and_scales is None:
        return [], []
    if not isinstance(boundaries_and_scales, dict):
        raise TypeError(f"{name}: boundaries_and_scales must be a dict {{step: scale}} or None, "
                        f"got {type(boundaries_and_scales).__name__}")
    items = sorted(boundaries_and_scales.items())
    for step, scale in items:
        if isinstance(step, bool) or not isinstance(step, numbers.Real):
            raise TypeError(f"{name}: boundaries_and_scales keys must be step numbers, got {step!r}")
        check_value(f"boundaries_and_scales[{step}]", scale)
        if not isinstance(scale, torch.Tensor) and not scale >= 0.0:
            raise ValueError(f"{name}: boundaries_and_scales must have non-negative scales, "
                             f"got {scale} at step {step}")
    return [s for s, _ in items], [v for _, v in items]


def piecewise_constant_schedule(init_value: Any, boundaries_and_scales: dict[int, float] | None = None
                                ) -> Schedule:
    """``init_value`` times the product of every scale whose boundary the count has reached.

    At step ``t`` the value is ``init_value * prod(s_i for b_i, s_i in boundaries_and_scales
    if t >= b_i)``: the scales are cumulative multipliers.

    Args:
      init_value: the value before the first boundary (number or 0-d tensor).
      boundaries_and_scales: ``{step: scale}`` with non-negative scales (default None:
        constant).

    Example:
      >>> import functional_optim as fo
      >>> sched = fo.piecewise_constant_schedule(1.0, {100: 0.1, 200: 0.1})
      >>> sched(99), sched(100), round(sched(250), 6)
      (1.0, 0.1, 0.01)
    """
    check_value("init_value", init_value)
    bounds, scales = _boundaries("piecewise_constant_schedule", boundaries_and_scales)

    def schedule(count):
        c = float_count(count)
        value = torch.as_tensor(init_value, dtype=c.dtype) if not isinstance(init_value, torch.Tensor) \
            else init_value
        for bound, scale in zip(bounds, scales):
            value = torch.where(c >= bound, value * scale, value)
        return finish(value, count, init_value, *scales)

    return schedule


def _linear_interpolate(start: Any, end: Any, pct: torch.Tensor) -> torch.Tensor:
    return (end - start) * pct + start


def _cosine_interpolate(start: Any, end: Any, pct: torch.Tensor) -> torch.Tensor:
    return end + (start - end) / 2.0 * (torch.cos(math.pi * pct) + 1)


def piecewise_interpolate_schedule(interpolate_type: str, init_value: Any,
                                   boundaries_and_scales: dict[int, float] | None = None) -> Schedule:
    """Interpolation (linear or cosine) between cumulatively scaled values at boundaries.

    The values at the boundaries ``0 = b_0 < b_1 < ... < b_n`` are ``v_0 = init_value``
    and ``v_i = v_{i-1} * s_i``; between ``b_{i-1}`` and ``b_i`` the schedule moves from
    ``v_{i-1}`` to ``v_i``, and it stays at ``v_n`` from ``b_n`` on. As in optax, a
    negative count gives 0.

    Args:
      interpolate_type: ``'linear'`` or ``'cosine'``.
      init_value: the value at step 0 (number or 0-d tensor).
      boundaries_and_scales: ``{step: scale}`` with non-negative scales (default None:
        constant ``init_value`` for counts >= 0).

    Example:
      >>> import functional_optim as fo
      >>> sched = fo.piecewise_interpolate_schedule("linear", 1.0, {4: 0.1, 8: 0.01})
      >>> [round(sched(t), 6) for t in (0, 2, 4, 6, 8, 10)]
      [1.0, 0.55, 0.1, 0.0505, 0.001, 0.001]
    """
    name = "piecewise_interpolate_schedule"
    if interpolate_type == "linear":
        interpolate = _linear_interpolate
    elif interpolate_type == "cosine":
        interpolate = _cosine_interpolate
    else:
        raise ValueError(f"{name}: interpolate_type must be 'linear' or 'cosine', got {interpolate_type!r}")
    check_value("init_value", init_value)
    boundaries, scales = _boundaries(name, boundaries_and_scales)
    bounds = [0, *boundaries]
    values = [init_value]
    for scale in scales:
        values.append(values[-1] * scale)
    intervals = [(bounds[i], bounds[i + 1], max(bounds[i + 1] - bounds[i], 1), values[i], values[i + 1])
                 for i in range(len(boundaries))]

    def schedule(count):
        c = float_count(count)
        zero = c.new_zeros(())
        value = zero
        for low, high, size, start, end in intervals:
            pct = (c - low) / size
            value = value + torch.where((low <= c) & (c < high), interpolate(start, end, pct), zero)
        value = value + torch.where(bounds[-1] <= c, values[-1], zero)
        return finish(value, count, init_value, *scales)

    return schedule
