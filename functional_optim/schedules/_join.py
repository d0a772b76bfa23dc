"""Joining schedules one after another."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

from ..base import Schedule
from ..hyperparams import is_schedule
from ._common import like


def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Run ``schedules`` one after another, switching at ``boundaries``.

    From ``boundaries[i - 1]`` on, the value is ``schedules[i](count - boundaries[i - 1])``:
    each later schedule counts from its own start. (Exactly optax's rule: a later
    boundary wins wherever ``count >= boundary``, so give the boundaries in increasing
    order.)

    Args:
      schedules: the schedules, in order (any callables ``count -> value``).
      boundaries: ``len(schedules) - 1`` step numbers where the next schedule takes over.

    Example:
      >>> import functional_optim as fo
      >>> sched = fo.join_schedules([fo.constant_schedule(1.0), fo.linear_schedule(1.0, 0.0, 10)], [5])
      >>> sched(4), sched(5), sched(10), sched(20)
      (1.0, 1.0, 0.5, 0.0)
    """
    schedules = list(schedules)
    boundaries = list(boundaries)
    if not schedules:
        raise ValueError("join_schedules: schedules must not be empty")
    for i, fn in enumerate(schedules):
        if not is_schedule(fn):
            raise TypeError(f"join_schedules: schedules[{i}] must be callable, got {type(fn).__name__}")
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(f"join_schedules: boundaries must have len(schedules) - 1 = {len(schedules) - 1} "
                         f"entries, got {len(boundaries)}")
    for i, b in enumerate(boundaries):
        if isinstance(b, bool) or not isinstance(b, numbers.Real):
            raise TypeError(f"join_schedules: boundaries[{i}] must be a step number, got {type(b).__name__}")

    def schedule(count):
        value = schedules[0](count)
        for boundary, fn in zip(boundaries, schedules[1:]):
            if isinstance(count, torch.Tensor):
                nxt = fn(count - boundary)
                if not isinstance(value, torch.Tensor) and not isinstance(nxt, torch.Tensor):
                    value = like(value, count)
                value = torch.where(count < boundary, value, nxt)
            elif count >= boundary:  # a Python count: choose in Python
                value = fn(count - boundary)
        return value

    return schedule
