"""Schedules: pure functions ``count -> value`` with optax's names, arguments and defaults.

Each accepts a Python number or a 0-d tensor count (int or float) and computes with
tensor ops only, so a schedule inside a compiled step never recompiles as the count
changes. Use one as a hyperparameter (``fo.scale_by_learning_rate(sched)``), or as a
``torch.optim.lr_scheduler`` through ``adapters.ScheduleLR``.

Modules by family: ``_basic`` (constant, polynomial, linear, exponential), ``_piecewise``,
``_cosine`` (cosine, warmup-cosine, SGDR), ``_warmup``, ``_one_cycle``, ``_join``, and
``_monai`` (MONAI's warmup-cosine and LR-finder range schedules).
"""

from ._basic import constant_schedule, exponential_decay, linear_schedule, polynomial_schedule
from ._cosine import cosine_decay_schedule, sgdr_schedule, warmup_cosine_decay_schedule
from ._join import join_schedules
from ._monai import exponential_range_schedule, linear_range_schedule, warmup_cosine_schedule
from ._one_cycle import cosine_onecycle_schedule, linear_onecycle_schedule
from ._piecewise import piecewise_constant_schedule, piecewise_interpolate_schedule
from ._warmup import warmup_constant_schedule, warmup_exponential_decay_schedule

__all__ = [
    "constant_schedule", "linear_schedule", "polynomial_schedule", "exponential_decay",
    "piecewise_constant_schedule", "piecewise_interpolate_schedule",
    "cosine_decay_schedule", "warmup_cosine_decay_schedule", "sgdr_schedule",
    "warmup_constant_schedule", "warmup_exponential_decay_schedule",
    "linear_onecycle_schedule", "cosine_onecycle_schedule", "join_schedules",
    "warmup_cosine_schedule", "linear_range_schedule", "exponential_range_schedule",
]
