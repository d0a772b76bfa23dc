"""Linear warmup followed by a constant value or an exponential decay."""

from __future__ import annotations

from typing import Any

from ..base import Schedule
from ._basic import exponential_decay, linear_schedule
from ._common import check_steps, check_value
from ._join import join_schedules


def warmup_constant_schedule(init_value: Any, peak_value: Any, warmup_steps: int) -> Schedule:
    """Linear warmup from ``init_value`` to ``peak_value``, then constant (no decay).

    This is ``linear_schedule(init_value, peak_value, warmup_steps)``; as in optax,
    ``warmup_steps=0`` therefore gives a constant ``init_value``.

    Args:
      init_value: the value at step 0 (number or 0-d tensor).
      peak_value: the value from ``warmup_steps`` on.
      warmup_steps: the length of the linear warmup.

    Example:
      >>> import functional_optim as fo
      >>> sched = fo.warmup_constant_schedule(0.0, 1.0, warmup_steps=4)
      >>> sched(0), sched(2), sched(4), sched(100)
      (0.0, 0.5, 1.0, 1.0)
    """
    check_steps("warmup_steps", warmup_steps, schedule="warmup_constant_schedule")
    return linear_schedule(init_value=init_value, end_value=peak_value, transition_steps=warmup_steps)


def warmup_exponential_decay_schedule(init_value: Any, peak_value: Any, warmup_steps: int,
                                      transition_steps: int, decay_rate: Any, transition_begin: int = 0,
                                      staircase: bool = False, end_value: Any = None) -> Schedule:
    """Linear warmup from ``init_value`` to ``peak_value``, then :func:`exponential_decay`.

    From ``warmup_steps`` on the value is ``exponential_decay(peak_value, transition_steps,
    decay_rate, transition_begin, staircase, end_value)`` evaluated at
    ``count - warmup_steps``.

    Args:
      init_value: the value at step 0.
      peak_value: the value at the end of the warmup, where the decay starts.
      warmup_steps: the length of the linear warmup (>= 0).
      transition_steps: steps per factor of ``decay_rate`` (``<= 0``: no decay).
      decay_rate: the decay factor (>= 0; 0 means no decay, as in optax).
      transition_begin: steps held at ``peak_value`` after the warmup (default 0).
      staircase: decay at whole multiples of ``transition_steps`` only (default False).
      end_value: the bound where the decay stops (default None).

    Example:
      >>> import functional_optim as fo
      >>> sched = fo.warmup_exponential_decay_schedule(0.0, 1.0, warmup_steps=2,
      ...                                              transition_steps=1, decay_rate=0.5)
      >>> sched(0), sched(1), sched(2), sched(3), sched(4)
      (0.0, 0.5, 1.0, 0.5, 0.25)
    """
    name = "warmup_exponential_decay_schedule"
    check_value("init_value", init_value)
    check_steps("warmup_steps", warmup_steps, low=0, schedule=name)
    return join_schedules(
        [linear_schedule(init_value, peak_value, transition_steps=warmup_steps),
         exponential_decay(peak_value, transition_steps=transition_steps, decay_rate=decay_rate,
                           transition_begin=transition_begin, staircase=staircase, end_value=end_value)],
        [warmup_steps])
