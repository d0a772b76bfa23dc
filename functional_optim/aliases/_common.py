"""Pieces shared by the torch.optim-compatible aliases."""

from __future__ import annotations

from typing import Any

import torch

from ..base import GradientTransformation
from ..transforms import scale


def is_zero(value: Any) -> bool:
    """True for a Python number equal to zero (tensors are never statically zero)."""
    return not isinstance(value, torch.Tensor) and not callable(value) and value == 0


def maximize_part(maximize: bool) -> list[GradientTransformation]:
    """torch's ``maximize``: negate the gradient first (before any weight decay)."""
    if not isinstance(maximize, bool):
        raise TypeError(f"maximize must be a bool, got {type(maximize).__name__}")
    return [scale(-1.0)] if maximize else []
