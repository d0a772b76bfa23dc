"""One-cycle schedules (Smith & Topin, "Super-Convergence", 2017) with optax's arguments."""

from __future__ import annotations

from typing import Any

from ..base import Schedule
from ._common import check_steps, check_value, read
from ._piecewise import piecewise_interpolate_schedule


def _check(name: str, transition_steps: Any, peak_value: Any, pct_start: float, pct_final: float,
           div_factor: Any, final_div_factor: Any) -> None:
    check_steps("transition_steps", transition_steps, low=0, low_inclusive=False, schedule=name)
    check_value("peak_value", peak_value)
    if not 0.0 <= read("pct_start", pct_start) <= read("pct_final", pct_final) <= 1.0:
        raise ValueError(f"{name}: expected 0 <= pct_start <= pct_final <= 1, got pct_start={pct_start}"
                         + (f", pct_final={pct_final}" if pct_final != 1.0 else ""))
    for arg, v in (("div_factor", div_factor), ("final_div_factor", final_div_factor)):
        if not read(arg, v) > 0:
            raise ValueError(f"{name}: {arg} must be > 0, got {v}")


def linear_onecycle_schedule(transition_steps: int, peak_value: Any, pct_start: float = 0.3,
                             pct_final: float = 0.85, div_factor: float = 25.0,
                             final_div_factor: float = 1e4) -> Schedule:
    """Three linear phases: up to ``peak_value``, back down, then a final anneal.

    With ``T = transition_steps`` and ``v0 = peak_value / div_factor``: linear from ``v0``
    to ``peak_value`` over steps ``[0, int(pct_start*T)]``, back to ``v0`` at
    ``int(pct_final*T)``, then to ``v0 / final_div_factor`` at ``T`` (held after).
    It is ``piecewise_interpolate_schedule('linear', v0, {int(pct_start*T): div_factor,
    int(pct_final*T): 1/div_factor, T: 1/final_div_factor})``.

    Args:
      transition_steps: ``T > 0``, the length of the cycle.
      peak_value: the maximum, reached at ``int(pct_start * T)``.
      pct_start: the fraction of the cycle spent increasing (default 0.3).
      pct_final: the fraction of the cycle at which the value is back at ``v0``
        (default 0.85).
      div_factor: ``v0 = peak_value / div_factor`` (default 25.0).
      final_div_factor: the final value is ``v0 / final_div_factor`` (default 1e4).

    Example:
      >>> import functional_optim as fo
      >>> sched = fo.linear_onecycle_schedule(100, peak_value=1.0, div_factor=10.0)
      >>> sched(0), sched(30), round(sched(85), 6), round(sched(100), 9)
      (0.1, 1.0, 0.1, 1e-05)
    """
    _check("linear_onecycle_schedule", transition_steps, peak_value, pct_start, pct_final, div_factor,
           final_div_factor)
    return piecewise_interpolate_schedule(
        "linear", peak_value / div_factor,
        {int(pct_start * transition_steps): div_factor,
         int(pct_final * transition_steps): 1.0 / div_factor,
         transition_steps: 1.0 / final_div_factor})


def cosine_onecycle_schedule(transition_steps: int, peak_value: Any, pct_start: float = 0.3,
                             div_factor: float = 25.0, final_div_factor: float = 1e4) -> Schedule:
    """Cosine up to ``peak_value``, then cosine down to ``peak_value / (div_factor * final_div_factor)``.

    With ``T = transition_steps``: from ``peak_value / div_factor`` at step 0 to
    ``peak_value`` at ``int(pct_start*T)``, then to the final value at ``T`` (held after),
    each phase a half cosine. It is ``piecewise_interpolate_schedule('cosine',
    peak_value/div_factor, {int(pct_start*T): div_factor, T: 1/(div_factor*final_div_factor)})``.

    Args:
      transition_steps: ``T > 0``, the length of the cycle.
      peak_value: the maximum, reached at ``int(pct_start * T)``.
      pct_start: the fraction of the cycle spent increasing (default 0.3).
      div_factor: the initial value is ``peak_value / div_factor`` (default 25.0).
      final_div_factor: the final value is ``initial / final_div_factor`` (default 1e4).

    Example:
      >>> import functional_optim as fo
      >>> sched = fo.cosine_onecycle_schedule(100, peak_value=1.0, div_factor=10.0)
      >>> round(sched(0), 6), sched(30), round(sched(65), 6), round(sched(100), 9)
      (0.1, 1.0, 0.500005, 1e-05)
    """
    _check("cosine_onecycle_schedule", transition_steps, peak_value, pct_start, 1.0, div_factor,
           final_div_factor)
    return piecewise_interpolate_schedule(
        "cosine", peak_value / div_factor,
        {int(pct_start * transition_steps): div_factor,
         int(transition_steps): 1.0 / (div_factor * final_div_factor)})
