"""Constant, polynomial (linear) and exponential schedules, with optax's names and arguments."""

from __future__ import annotations

from typing import Any

import torch

from ..base import Schedule
from ._common import check_steps, check_value, finish, float_count, read


def constant_schedule(value: Any) -> Schedule:
    """A schedule that always returns ``value``.

    Args:
      value: the value held throughout (a number or a 0-d tensor, returned as is).

    Example:
      >>> import functional_optim as fo
      >>> fo.constant_schedule(0.5)(100)
      0.5
    """
    check_value("value", value)

    def schedule(count):
        del count
        return value

    return schedule


def polynomial_schedule(init_value: Any, end_value: Any, power: Any, transition_steps: int,
                        transition_begin: int = 0) -> Schedule:
    r"""Polynomial transition from ``init_value`` to ``end_value``.

    .. math::
      v(t) = (I - E)\,\bigl(1 - \tfrac{c}{T}\bigr)^{P} + E,\qquad
      c = \operatorname{clip}(t - B, 0, T)

    so the value is ``I`` up to step ``B`` and ``E`` from step ``B + T`` on.

    Args:
      init_value: ``I``, the value before and at ``transition_begin`` (number or 0-d tensor).
      end_value: ``E``, the value from ``transition_begin + transition_steps`` on.
      power: ``P``, the polynomial's power (1 is linear).
      transition_steps: ``T``, the length of the transition. ``T <= 0`` disables it: the
        schedule is then constant at ``init_value`` (as in optax).
      transition_begin: ``B >= 0``, steps held at ``init_value`` first (default 0).

    Example:
      >>> import functional_optim as fo
      >>> sched = fo.polynomial_schedule(1.0, 0.01, power=2, transition_steps=100)
      >>> round(sched(0), 4), round(sched(50), 4), round(sched(100), 4), round(sched(500), 4)
      (1.0, 0.2575, 0.01, 0.01)
    """
    name = "polynomial_schedule"
    for arg, v in (("init_value", init_value), ("end_value", end_value), ("power", power)):
        check_value(arg, v)
    check_steps("transition_steps", transition_steps, schedule=name)
    check_steps("transition_begin", transition_begin, low=0, schedule=name)
    if transition_steps <= 0:
        return constant_schedule(init_value)

    def schedule(count):
        c = torch.clamp(float_count(count) - transition_begin, 0, transition_steps)
        frac = 1 - c / transition_steps
        value = (init_value - end_value) * (frac ** power) + end_value
        return finish(value, count, init_value, end_value, power)

    return schedule


def linear_schedule(init_value: Any, end_value: Any, transition_steps: int,
                    transition_begin: int = 0) -> Schedule:
    r"""Linear transition from ``init_value`` to ``end_value`` (``polynomial_schedule`` with power 1).

    .. math::
      v(t) = I + \tfrac{c}{T}(E - I)\ \text{(computed as the power-1 polynomial)},\qquad
      c = \operatorname{clip}(t - B, 0, T)

    Args:
      init_value: the value up to ``transition_begin``.
      end_value: the value from ``transition_begin + transition_steps`` on.
      transition_steps: the length of the ramp; ``<= 0`` gives a constant ``init_value``.
      transition_begin: steps held at ``init_value`` first (default 0, must be >= 0).

    Example:
      >>> import functional_optim as fo
      >>> sched = fo.linear_schedule(0.0, 1.0, transition_steps=10, transition_begin=5)
      >>> sched(0), sched(10), sched(15), sched(99)
      (0.0, 0.5, 1.0, 1.0)
    """
    return polynomial_schedule(init_value=init_value, end_value=end_value, power=1,
                               transition_steps=transition_steps, transition_begin=transition_begin)


def exponential_decay(init_value: Any, transition_steps: int, decay_rate: Any, transition_begin: int = 0,
                      staircase: bool = False, end_value: Any = None) -> Schedule:
    r"""Continuous or staircase exponential decay.

    .. math::
      v(t) = I \cdot r^{p},\quad p = \frac{t - B}{T}\ (\lfloor\cdot\rfloor \text{ with staircase})
      \quad\text{for } t > B,\qquad v(t) = I \text{ for } t \le B

    then bounded by ``end_value`` (a floor when ``r < 1``, a ceiling when ``r > 1``).

    Args:
      init_value: ``I``, the initial value (number or 0-d tensor).
      transition_steps: ``T``, steps per factor of ``decay_rate``. ``T <= 0`` gives a
        constant ``init_value`` (as in optax).
      decay_rate: ``r >= 0``; ``0`` gives a constant ``init_value`` (as in optax).
      transition_begin: ``B >= 0``, steps held at ``init_value`` first (default 0).
      staircase: decay at whole multiples of ``transition_steps`` only (default False).
      end_value: the bound where the decay stops (default None: unbounded).

    Example:
      >>> import functional_optim as fo
      >>> sched = fo.exponential_decay(1.0, transition_steps=10, decay_rate=0.5, end_value=0.2)
      >>> sched(0), sched(10), sched(20), sched(100)
      (1.0, 0.5, 0.25, 0.2)
    """
    name = "exponential_decay"
    check_value("init_value", init_value)
    check_steps("transition_steps", transition_steps, schedule=name)
    check_steps("transition_begin", transition_begin, low=0, schedule=name)
    rate = read("decay_rate", decay_rate)
    if rate < 0:
        raise ValueError(f"{name}: decay_rate must be >= 0, got {rate}")
    if not isinstance(staircase, bool):
        raise TypeError(f"{name}: staircase must be a bool, got {type(staircase).__name__}")
    if end_value is not None:
        check_value("end_value", end_value)
    if transition_steps <= 0 or rate == 0:
        return constant_schedule(init_value)
    bound = None if end_value is None else ("min" if rate < 1.0 else "max")

    def schedule(count):
        decreased = float_count(count) - transition_begin
        p = decreased / transition_steps
        if staircase:
            p = torch.floor(p)
        value = torch.where(decreased <= 0, init_value, init_value * torch.pow(decay_rate, p))
        if bound == "min":
            value = torch.clamp(value, min=end_value)
        elif bound == "max":
            value = torch.clamp(value, max=end_value)
        return finish(value, count, init_value, decay_rate, end_value)

    return schedule
