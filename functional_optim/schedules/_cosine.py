"""Cosine schedules: cosine decay, linear warmup then cosine decay, warm restarts (SGDR)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ..base import Schedule
from ._basic import linear_schedule
from ._common import check_steps, check_value, finish, float_count
from ._join import join_schedules


def cosine_decay_schedule(init_value: Any, decay_steps: int, alpha: Any = 0.0, exponent: Any = 1.0) -> Schedule:
    r"""Cosine decay from ``init_value`` to ``alpha * init_value`` over ``decay_steps``.

    .. math::
      v(t) = I\,\Bigl((1 - \alpha)\,\bigl[\tfrac12\bigl(1 + \cos(\pi\,\tfrac{\min(t, T)}{T})\bigr)\bigr]^{p}
      + \alpha\Bigr)

    Args:
      init_value: ``I``, the value at step 0 (number or 0-d tensor).
      decay_steps: ``T > 0``, the length of the decay; the value stays at ``alpha * I`` after.
      alpha: the final multiplier of ``init_value`` (default 0.0).
      exponent: ``p``, the power of the cosine factor (default 1.0).

    Example:
      >>> import functional_optim as fo
      >>> sched = fo.cosine_decay_schedule(1.0, decay_steps=100, alpha=0.1)
      >>> sched(0), round(sched(50), 6), round(sched(100), 6), round(sched(1000), 6)
      (1.0, 0.55, 0.1, 0.1)
    """
    check_value("init_value", init_value)
    check_steps("decay_steps", decay_steps, low=0, low_inclusive=False, schedule="cosine_decay_schedule")
    check_value("alpha", alpha)
    check_value("exponent", exponent)
    steps = float(decay_steps)

    def schedule(count):
        return finish(_cosine(count, init_value, steps, alpha, exponent), count, init_value, alpha, exponent)

    return schedule


def _cosine(count: Any, init_value: Any, steps: float, alpha: Any, exponent: Any) -> torch.Tensor:
    c = torch.clamp(float_count(count), max=steps)
    cosine = 0.5 * (1 + torch.cos(math.pi * c / steps))
    return init_value * ((1 - alpha) * cosine ** exponent + alpha)


def warmup_cosine_decay_schedule(init_value: Any, peak_value: Any, warmup_steps: int, decay_steps: int,
                                 end_value: Any = 0.0, exponent: Any = 1.0) -> Schedule:
    """Linear warmup from ``init_value`` to ``peak_value``, then cosine decay to ``end_value``.

    Note (as in optax): ``decay_steps`` is the *total* length, warmup included; the
    cosine phase lasts ``decay_steps - warmup_steps`` steps. Built as
    ``join_schedules([linear_schedule(init, peak, warmup_steps),
    cosine_decay_schedule(peak, decay_steps - warmup_steps, alpha=end/peak, exponent)],
    [warmup_steps])``.

    Args:
      init_value: the value at step 0.
      peak_value: the value at the end of the warmup (``alpha`` is 0 when it is 0).
      warmup_steps: the length of the linear warmup (>= 0).
      decay_steps: the total length of the schedule (> ``warmup_steps``).
      end_value: the value from ``decay_steps`` on (default 0.0).
      exponent: the power of the cosine factor (default 1.0).

    Example:
      >>> import functional_optim as fo
      >>> sched = fo.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=10, decay_steps=110, end_value=0.1)
      >>> sched(0), sched(5), sched(10), round(sched(60), 6), round(sched(110), 6)
      (0.0, 0.5, 1.0, 0.55, 0.1)
    """
    name = "warmup_cosine_decay_schedule"
    for arg, v in (("init_value", init_value), ("peak_value", peak_value), ("end_value", end_value)):
        check_value(arg, v)
    check_steps("warmup_steps", warmup_steps, low=0, schedule=name)
    check_steps("decay_steps", decay_steps, schedule=name)
    if not decay_steps > warmup_steps:
        raise ValueError(f"{name}: decay_steps (the total length, warmup included) must be greater than "
                         f"warmup_steps, got decay_steps={decay_steps}, warmup_steps={warmup_steps}")
    check_value("exponent", exponent)
    if isinstance(peak_value, torch.Tensor):
        steps = float(decay_steps - warmup_steps)

        def decay(count):
            # alpha from the peak's current value, at every call: a tensor peak may change
            # in place (the adapter refreshes its lr tensor before each step), and a tensor
            # derived here once would go stale (and be one more input of a compiled step)
            alpha = torch.where(peak_value == 0, 0.0, end_value / torch.where(peak_value == 0, 1.0, peak_value))
            return finish(_cosine(count, peak_value, steps, alpha, exponent), count, peak_value, exponent)
    else:
        alpha = 0.0 if peak_value == 0.0 else end_value / peak_value
        decay = cosine_decay_schedule(peak_value, decay_steps - warmup_steps, alpha=alpha, exponent=exponent)
    return join_schedules([linear_schedule(init_value, peak_value, transition_steps=warmup_steps), decay],
                          [warmup_steps])


def sgdr_schedule(cosine_kwargs: Iterable[Mapping[str, Any]]) -> Schedule:
    """SGD with warm restarts: warmup-cosine cycles one after another.

    Each cycle is ``warmup_cosine_decay_schedule(**kwargs)`` and lasts its
    ``decay_steps``; the next cycle starts (from its own step 0) when it ends.

    Args:
      cosine_kwargs: one dict of :func:`warmup_cosine_decay_schedule` arguments per cycle
        (``init_value``, ``peak_value``, ``warmup_steps``, ``decay_steps``, optionally
        ``end_value`` and ``exponent``).

    Example:
      >>> import functional_optim as fo
      >>> cycle = dict(init_value=0.0, peak_value=1.0, warmup_steps=2, decay_steps=10)
      >>> sched = fo.sgdr_schedule([cycle, cycle])
      >>> sched(2), sched(10), sched(12)
      (1.0, 0.0, 1.0)
    """
    schedules, boundaries, step = [], [], 0
    for i, kwargs in enumerate(cosine_kwargs):
        if not isinstance(kwargs, Mapping) or "decay_steps" not in kwargs:
            raise ValueError(f"sgdr_schedule: cosine_kwargs[{i}] must be a dict of warmup_cosine_decay_schedule "
                             f"arguments including decay_steps, got {kwargs!r}")
        schedules.append(warmup_cosine_decay_schedule(**kwargs))
        step += kwargs["decay_steps"]
        boundaries.append(step)
    if not schedules:
        raise ValueError("sgdr_schedule: cosine_kwargs must hold at least one cycle")
    return join_schedules(schedules, boundaries[:-1])
