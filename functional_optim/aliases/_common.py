"""Pieces shared by the torch.optim-compatible aliases."""

from __future__ import annotations

from typing import Any

import torch

from ..base import GradientTransformation
from ..hyperparams import check_number, concrete, is_schedule
from ..transforms import scale


def is_zero(value: Any) -> bool:
    """True for a Python number equal to zero (tensors are never statically zero)."""
    return not isinstance(value, torch.Tensor) and not callable(value) and value == 0


def maximize_part(maximize: bool) -> list[GradientTransformation]:
    """torch's ``maximize``: negate the gradient first (before any weight decay)."""
    if not isinstance(maximize, bool):
        raise TypeError(f"maximize must be a bool, got {type(maximize).__name__}")
    return [scale(-1.0)] if maximize else []


def reject(bad: bool, message: str, rule: str) -> None:
    """Raise ValueError when ``bad``: the reference library's message first (code matching
    on it keeps working), then the rule naming the argument."""
    if bad:
        raise ValueError(f"{message} ({rule})")


def number(name: str, value: Any) -> float | None:
    """The value of a number or 0-d tensor hyperparameter ``name`` (None when it cannot be
    read, e.g. under tracing); a schedule raises TypeError pointing at ``inject_hyperparams``."""
    if is_schedule(value):
        raise TypeError(f"{name} must be a number or a 0-d tensor, got a schedule "
                        "(use fo.inject_hyperparams to schedule it)")
    check_number(name, value)
    return concrete(value)
