"""MONAI's schedules as pure functions of the step count.

``warmup_cosine_schedule`` is the math of ``monai.optimizers.WarmupCosineSchedule``;
``linear_range_schedule`` and ``exponential_range_schedule`` are that of MONAI's
learning-rate-finder schedulers ``LinearLR`` and ``ExponentialLR`` (not torch's classes of
the same names). ``adapters`` wraps them as ``torch.optim.lr_scheduler`` classes with
MONAI's signatures.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..base import Schedule
from ..hyperparams import concrete
from ._common import check_steps, check_value, finish, float_count, read


def warmup_cosine_schedule(peak_value: Any, warmup_steps: int, t_total: int, end_lr: Any = 0.0,
                           cycles: float = 0.5, warmup_multiplier: float = 0.0) -> Schedule:
    r"""MONAI's ``WarmupCosineSchedule``: linear warmup, then cosine decay floored at ``end_lr``.

    With ``W = min(max(warmup_steps, 0), t_total)``, ``m = warmup_multiplier``:

    .. math::
      v(t) = \begin{cases}
        P\,\bigl(m + (1 - m)\,\tfrac{t}{\max(1, W)}\bigr) & t < W \\
        \max\Bigl(e,\ P\,\max\bigl(0, \tfrac12(1 + \cos(2\pi c\,\tfrac{t - W}{\max(1, T - W)}))\bigr)\Bigr)
          & t \ge W
      \end{cases}

    ``end_lr`` is an absolute floor applied after the warmup only; past ``t_total`` the
    cosine goes on (it rises again), floored at ``end_lr``. Unlike optax's
    :func:`warmup_cosine_decay_schedule`, the warmup starts at a fraction of the peak and
    the floor is a ``max``, not an interpolation target.

    Args:
      peak_value: ``P``, the base learning rate (the optimizer's lr in MONAI).
      warmup_steps: the length of the warmup (clipped to ``[0, t_total]``).
      t_total: ``T >= 0``, the total number of steps.
      end_lr: ``e``, the floor after the warmup (default 0.0).
      cycles: ``c``, the number of cosine cycles over ``T - W`` steps (default 0.5: one
        half cosine, from ``P`` down to 0).
      warmup_multiplier: ``m`` in [0, 1], the warmup starts at ``m * P`` (default 0).

    Example:
      >>> import functional_optim as fo
      >>> sched = fo.warmup_cosine_schedule(0.1, warmup_steps=3, t_total=10, end_lr=0.01,
      ...                                   warmup_multiplier=0.1)
      >>> [round(sched(t), 4) for t in (0, 1, 3, 5, 9, 12)]
      [0.01, 0.04, 0.1, 0.0812, 0.01, 0.0188]
    """
    name = "warmup_cosine_schedule"
    check_value("peak_value", peak_value)
    check_value("end_lr", end_lr)
    check_steps("warmup_steps", warmup_steps, schedule=name)
    check_steps("t_total", t_total, low=0, schedule=name)
    mult = read("warmup_multiplier", warmup_multiplier)
    if not 0.0 <= mult <= 1.0:
        raise ValueError(f"{name}: warmup_multiplier must be in [0, 1], got {warmup_multiplier}")
    cyc = read("cycles", cycles)
    warmup = min(max(warmup_steps, 0), t_total)
    warm_len = float(max(1.0, warmup))
    decay_len = float(max(1, t_total - warmup))

    def schedule(count):
        t = float_count(count)
        ramp = peak_value * (mult + (1 - mult) * (t / warm_len))
        progress = (t - warmup) / decay_len
        cosine = torch.clamp(0.5 * (1.0 + torch.cos(math.pi * cyc * 2.0 * progress)), min=0.0)
        decay = torch.clamp(peak_value * cosine, min=end_lr)
        return finish(torch.where(t < warmup, ramp, decay), count, peak_value, end_lr)

    return schedule


def _check_range(name: str, num_iter: Any) -> None:
    check_steps("num_iter", num_iter, schedule=name)
    if not num_iter > 1:
        raise ValueError(f"{name}: num_iter must be larger than 1, got {num_iter}")


def linear_range_schedule(init_value: Any, end_value: Any, num_iter: int) -> Schedule:
    r"""MONAI's LR-finder ``LinearLR``: linear from ``init_value`` at step 0 to ``end_value``
    at step ``num_iter - 1``.

    .. math:: v(t) = I + \tfrac{t}{N - 1}\,(E - I)

    There is no clamping: past ``num_iter - 1`` the line goes on (as in MONAI).

    Args:
      init_value: ``I``, the value at step 0 (the optimizer's lr in MONAI).
      end_value: ``E``, the value at step ``num_iter - 1`` (MONAI's ``end_lr``).
      num_iter: ``N > 1``, the number of iterations of the range test.

    Example:
      >>> import functional_optim as fo
      >>> sched = fo.linear_range_schedule(0.0, 1.0, num_iter=5)
      >>> sched(0), sched(2), sched(4), sched(8)
      (0.0, 0.5, 1.0, 2.0)
    """
    check_value("init_value", init_value)
    check_value("end_value", end_value)
    _check_range("linear_range_schedule", num_iter)

    def schedule(count):
        r = float_count(count) / (num_iter - 1)
        return finish(init_value + r * (end_value - init_value), count, init_value, end_value)

    return schedule


def exponential_range_schedule(init_value: Any, end_value: Any, num_iter: int) -> Schedule:
    r"""MONAI's LR-finder ``ExponentialLR``: geometric from ``init_value`` at step 0 to
    ``end_value`` at step ``num_iter - 1``.

    .. math:: v(t) = I\,(E / I)^{t / (N - 1)}

    There is no clamping: past ``num_iter - 1`` the geometric progression goes on.

    Args:
      init_value: ``I > 0``, the value at step 0 (the optimizer's lr in MONAI).
      end_value: ``E > 0``, the value at step ``num_iter - 1`` (MONAI's ``end_lr``).
      num_iter: ``N > 1``, the number of iterations of the range test.

    Example:
      >>> import functional_optim as fo
      >>> sched = fo.exponential_range_schedule(1e-3, 1.0, num_iter=4)
      >>> [round(sched(t), 9) for t in range(6)]
      [0.001, 0.01, 0.1, 1.0, 10.0, 100.0]
    """
    name = "exponential_range_schedule"
    for arg, v in (("init_value", init_value), ("end_value", end_value)):
        check_value(arg, v)
        known = concrete(v)  # None for a tensor inside a trace: not checked
        if known is not None and not known > 0:
            raise ValueError(f"{name}: {arg} must be > 0, got {v}")
    _check_range(name, num_iter)

    def schedule(count):
        r = float_count(count) / (num_iter - 1)
        return finish(init_value * (end_value / init_value) ** r, count, init_value, end_value)

    return schedule
