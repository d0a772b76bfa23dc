"""Functional schedules as ``torch.optim.lr_scheduler`` objects, for any torch optimizer.

``ScheduleLR`` drives ``group['lr']`` from any schedule ``count -> value`` (``fo.*_schedule``
or your own function). ``WarmupCosineSchedule``, ``LinearLR`` and ``ExponentialLR`` are
MONAI's scheduler classes (``monai.optimizers``), same signatures and values, built on
``fo.warmup_cosine_schedule``, ``fo.linear_range_schedule`` and
``fo.exponential_range_schedule``. Note that MONAI's ``LinearLR``/``ExponentialLR`` are
the LR-finder's range schedules, not torch's classes of the same names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

import functional_optim as fo
from functional_optim.hyperparams import is_schedule

__all__ = ["ScheduleLR", "WarmupCosineSchedule", "LinearLR", "ExponentialLR"]


def _as_float(value: Any) -> Any:
    return float(value.detach()) if isinstance(value, torch.Tensor) else value


class ScheduleLR(LRScheduler):
    """Any functional schedule as a learning-rate scheduler (the ``LambdaLR`` of schedules).

    After ``k`` calls of ``step()`` (``last_epoch == k``) each group's lr is
    ``schedule(k)`` (absolute, the default: the schedule *is* the learning rate, as when it
    is given to ``fo.scale_by_learning_rate``), or ``initial_lr * schedule(k)`` with
    ``as_multiplier=True`` (the schedule is a factor, as in ``LambdaLR``). Construction
    sets the lr for step 0. Works with any ``torch.optim.Optimizer`` (torch's own and
    ``adapters.FunctionalOptimizer``); a tensor ``group['lr']`` is filled in place.

    Args:
      optimizer: the wrapped optimizer.
      schedule: a schedule ``count -> value``, or a list with one per param group.
      last_epoch: the index of the last step when resuming (default -1: start).
      as_multiplier: multiply each group's initial lr by the schedule's value instead of
        using the value as the lr (default False).

    ``state_dict()`` leaves the schedule functions out (they are code, often closures);
    rebuild the scheduler with the same schedules, then ``load_state_dict``.

    Example:
      >>> import torch, functional_optim as fo
      >>> from adapters import ScheduleLR
      >>> opt = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=1.0)
      >>> sched = ScheduleLR(opt, fo.warmup_cosine_decay_schedule(0.0, 0.1, 10, 100))
      >>> for _ in range(10):
      ...     opt.step(); sched.step()
      >>> round(opt.param_groups[0]["lr"], 6)
      0.1
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Callable | Sequence[Callable],
                 last_epoch: int = -1, *, as_multiplier: bool = False):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        n = len(optimizer.param_groups)
        if isinstance(schedule, (list, tuple)):
            if len(schedule) != n:
                raise ValueError(f"schedule: expected {n} schedules (one per param group), got {len(schedule)}")
            schedules = list(schedule)
        else:
            schedules = [schedule] * n
        for i, fn in enumerate(schedules):
            if not is_schedule(fn):
                raise TypeError(f"schedule must be callable (count -> value), got {type(fn).__name__}"
                                + (f" at index {i}" if isinstance(schedule, (list, tuple)) else ""))
        if not isinstance(as_multiplier, bool):
            raise TypeError(f"as_multiplier must be a bool, got {type(as_multiplier).__name__}")
        self.schedules: list[Callable] | None = schedules
        self.as_multiplier = as_multiplier
        super().__init__(optimizer, last_epoch)

    def _group_schedules(self) -> list[Callable]:
        return self.schedules

    def get_lr(self) -> list[Any]:
        """The lrs for step ``last_epoch`` (closed form: no dependence on earlier steps)."""
        step = self.last_epoch
        lrs = []
        for fn, base in zip(self._group_schedules(), self.base_lrs):
            value = _as_float(fn(step))
            lrs.append(base * value if self.as_multiplier else value)
        return lrs

    _get_closed_form_lr = get_lr

    def state_dict(self) -> dict[str, Any]:
        """As torch's, without the schedule functions."""
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "schedules")}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch's; the schedules given at construction are kept."""
        self.__dict__.update({k: v for k, v in state_dict.items()
                              if k not in ("optimizer", "schedules", "lr_lambdas")})


class _FromBaseLR(ScheduleLR):
    """A ``ScheduleLR`` whose per-group schedules are built from each group's base lr."""

    def __init__(self, optimizer: torch.optim.Optimizer, last_epoch: int):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.schedules = None
        self.as_multiplier = False
        LRScheduler.__init__(self, optimizer, last_epoch)

    def _make(self, base_lr: float) -> Callable:
        raise NotImplementedError

    def _group_schedules(self) -> list[Callable]:
        if self.schedules is None:
            self.schedules = [self._make(float(_as_float(b))) for b in self.base_lrs]
        return self.schedules

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch's; the schedules are rebuilt from the loaded settings and base lrs."""
        super().load_state_dict(state_dict)
        self.schedules = None


class WarmupCosineSchedule(_FromBaseLR):
    """MONAI's ``WarmupCosineSchedule``: linear warmup, then cosine decay floored at ``end_lr``.

    Same signature and values as ``monai.optimizers.WarmupCosineSchedule`` (see
    ``fo.warmup_cosine_schedule`` for the formula): with ``base`` each group's initial lr,
    the warmup goes linearly from ``warmup_multiplier * base`` to ``base`` over
    ``warmup_steps``, then ``max(end_lr, base * max(0, 0.5 * (1 + cos(2*pi*cycles*p))))``
    with ``p`` the fraction of ``t_total - warmup_steps`` elapsed.

    Args:
      optimizer: the wrapped optimizer.
      warmup_steps: number of warmup steps (clipped to ``[0, t_total]``).
      t_total: total number of training steps.
      end_lr: the floor after the warmup, an absolute lr (default 0.0).
      cycles: cosine cycles over the decay (default 0.5: half a cosine, down to 0).
      last_epoch: the index of the last step when resuming (default -1).
      warmup_multiplier: the warmup starts at this fraction of the lr, in [0, 1] (default 0).

    Example:
      >>> import torch
      >>> from adapters import WarmupCosineSchedule
      >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
      >>> sched = WarmupCosineSchedule(opt, warmup_steps=3, t_total=10, end_lr=0.01, warmup_multiplier=0.1)
      >>> lrs = []
      >>> for _ in range(5):
      ...     lrs.append(round(opt.param_groups[0]["lr"], 4)); opt.step(); sched.step()
      >>> lrs
      [0.01, 0.04, 0.07, 0.1, 0.095]
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int, t_total: int, end_lr: float = 0.0,
                 cycles: float = 0.5, last_epoch: int = -1, warmup_multiplier: float = 0) -> None:
        if not 0 <= warmup_multiplier <= 1:
            raise ValueError(f"warmup_multiplier must be in 0..1 range, got {warmup_multiplier}")
        self.warmup_steps = min(max(warmup_steps, 0), t_total)
        self.warmup_multiplier = warmup_multiplier
        self.t_total = t_total
        self.cycles = cycles
        self.end_lr = end_lr
        fo.warmup_cosine_schedule(1.0, self.warmup_steps, t_total, end_lr, cycles, warmup_multiplier)  # validate
        super().__init__(optimizer, last_epoch)

    def _make(self, base_lr: float) -> Callable:
        return fo.warmup_cosine_schedule(base_lr, self.warmup_steps, self.t_total, end_lr=self.end_lr,
                                         cycles=self.cycles, warmup_multiplier=self.warmup_multiplier)


class _RangeLR(_FromBaseLR):
    _kind = ""

    def __init__(self, optimizer: torch.optim.Optimizer, end_lr: float, num_iter: int, last_epoch: int = -1) -> None:
        if isinstance(num_iter, bool) or not isinstance(num_iter, int) or num_iter <= 1:
            raise ValueError(f"{type(self).__name__}: num_iter must be an int larger than 1, got {num_iter!r}")
        self.end_lr = end_lr
        self.num_iter = num_iter
        super().__init__(optimizer, last_epoch)

    def _make(self, base_lr: float) -> Callable:
        if self._kind == "linear":
            return fo.linear_range_schedule(base_lr, self.end_lr, self.num_iter)
        if not (base_lr > 0 and self.end_lr > 0):
            raise ValueError(f"ExponentialLR: the initial lr and end_lr must be > 0, got lr={base_lr}, "
                             f"end_lr={self.end_lr}")
        return fo.exponential_range_schedule(base_lr, self.end_lr, self.num_iter)


class LinearLR(_RangeLR):
    """MONAI's LR-finder ``LinearLR`` (not torch's ``LinearLR``): the lr goes linearly from each
    group's initial lr at step 0 to ``end_lr`` at step ``num_iter - 1``, and on past it.

    ``lr(t) = base + t / (num_iter - 1) * (end_lr - base)`` (``fo.linear_range_schedule``).

    Args:
      optimizer: the wrapped optimizer.
      end_lr: the lr at step ``num_iter - 1``.
      num_iter: the number of iterations of the range test (> 1).
      last_epoch: the index of the last step when resuming (default -1).

    Example:
      >>> import torch
      >>> from adapters import LinearLR
      >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)
      >>> sched = LinearLR(opt, end_lr=1.0, num_iter=5)
      >>> opt.step(); sched.step(); opt.step(); sched.step()
      >>> opt.param_groups[0]["lr"]
      0.5
    """

    _kind = "linear"


class ExponentialLR(_RangeLR):
    """MONAI's LR-finder ``ExponentialLR`` (not torch's ``ExponentialLR``): the lr goes
    geometrically from each group's initial lr at step 0 to ``end_lr`` at step
    ``num_iter - 1``, and on past it.

    ``lr(t) = base * (end_lr / base) ** (t / (num_iter - 1))`` (``fo.exponential_range_schedule``;
    ``base`` and ``end_lr`` must be > 0).

    Args:
      optimizer: the wrapped optimizer.
      end_lr: the lr at step ``num_iter - 1``.
      num_iter: the number of iterations of the range test (> 1).
      last_epoch: the index of the last step when resuming (default -1).

    Example:
      >>> import torch
      >>> from adapters import ExponentialLR
      >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
      >>> sched = ExponentialLR(opt, end_lr=1.0, num_iter=4)
      >>> opt.step(); sched.step()
      >>> round(opt.param_groups[0]["lr"], 9)
      0.01
    """

    _kind = "exponential"
