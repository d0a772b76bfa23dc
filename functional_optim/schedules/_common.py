"""Helpers shared by the schedules: step counts as float tensors, argument checks.

A schedule is a pure function of a step count. It accepts a Python number or a 0-d
tensor (integer or floating) and computes with tensor ops only (``torch.where``,
``clamp``), never a Python branch on a tensor value, so a compiled step whose count is
a tensor in its state never recompiles as the count changes.

Dtypes: an integer tensor count is computed in float64 (float32 on devices without
float64, e.g. MPS), a floating count in its own dtype. A Python count with Python-number
hyperparameters gives a Python float (a 0-d tensor while being compiled); anything
else gives a 0-d tensor.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch

from ..hyperparams import check_number, concrete


def float_count(count: Any) -> torch.Tensor:
    """``count`` as a 0-d floating tensor (see the module docstring for the dtype)."""
    if isinstance(count, torch.Tensor):
        if count.is_floating_point():
            return count
        dtype = torch.float32 if count.device.type == "mps" else torch.float64
        return count.to(dtype)
    if isinstance(count, bool) or not isinstance(count, numbers.Real):
        raise TypeError(f"a schedule's count must be a number or a 0-d tensor, got {type(count).__name__}")
    return torch.tensor(float(count), dtype=torch.float64)


def finish(value: Any, count: Any, *hyperparams: Any) -> Any:
    """The schedule's result: a Python float when the count and every hyperparameter are
    Python numbers, else the tensor as computed (differentiable in tensor hyperparameters)."""
    if isinstance(count, torch.Tensor) or any(isinstance(h, torch.Tensor) for h in hyperparams):
        return value
    if torch.compiler.is_compiling():  # a Python count inside a compiled function: no .item()
        return value
    return float(value) if isinstance(value, torch.Tensor) else value


def like(value: Any, ref: torch.Tensor) -> torch.Tensor:
    """``value`` as a tensor in ``ref``'s floating dtype (and device) unless already a tensor."""
    if isinstance(value, torch.Tensor):
        return value
    return torch.as_tensor(value, dtype=ref.dtype if ref.is_floating_point() else torch.float64,
                           device=ref.device)


def check_value(name: str, value: Any) -> None:
    """A schedule value (``init_value``, ``peak_value``, ...): a number or a 0-d tensor."""
    check_number(name, value)


def check_steps(name: str, value: Any, *, low: float | None = None, low_inclusive: bool = True,
                schedule: str = "") -> None:
    """A step-valued argument: a Python number (not a tensor), optionally bounded below."""
    where = f"{schedule}: " if schedule else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}{name} must be a Python number of steps, got {type(value).__name__}")
    if value != value:
        raise ValueError(f"{where}{name} must not be NaN")
    if low is not None and (value < low or (not low_inclusive and value == low)):
        op = ">=" if low_inclusive else ">"
        raise ValueError(f"{where}{name} must be {op} {low}, got {value}")


def read(name: str, value: Any) -> float:
    """The concrete value of a number or 0-d tensor argument that decides a branch."""
    check_number(name, value)
    v = concrete(value)
    if v is None:
        raise TypeError(f"{name} must be readable when the schedule is built "
                        "(not a tensor inside a trace)")
    return v
