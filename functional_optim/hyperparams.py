"""Hyperparameter handling shared by transforms: validation and schedule evaluation.

A hyperparameter is a Python number, a 0-d tensor, or (where documented) a schedule
``count -> value``. Validation reads a tensor's value only when that is safe (outside
tracing and ``torch.func`` transforms), so building a transform never breaks a trace.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import torch

from .kernels import _in_functorch_transform, leafwise


def is_schedule(value: Any) -> bool:
    """True when ``value`` is a schedule (a callable that is not a tensor)."""
    return callable(value) and not isinstance(value, torch.Tensor)


def value_at(value: Any, count: torch.Tensor) -> Any:
    """The hyperparameter's value at step ``count`` (schedules are called, others returned).

    A schedule receives the count as a 0-d float tensor holding an integer (float64 where
    the device has it), so its arithmetic (``0.1 * 0.9 ** count``) runs in double
    precision, as torch's LR schedulers compute in Python floats; an int32 count would
    make it float32.
    """
    if not is_schedule(value):
        return value
    return materialize(value(count.to(torch.float32 if count.device.type == "mps" else torch.float64)))


def materialize(value: Any) -> Any:
    """``value`` (a per-step 0-d tensor: a schedule's value, a clipping factor) computed
    once per step when compiled; returned as is otherwise (and when not a 0-d tensor).

    Inlined into the elementwise update, inductor would recompute it for every vector of
    the update loop: a cosine schedule's ``cos`` and divisions, or a global norm's
    ``sqrt`` and division, per 8 elements (measured +40% on a clipped Adam step of 10M
    elements, one thread). Through ``kernels.leafwise`` it lives in a tiny kernel of its
    own, and the update loop loads it.

    Example:
      >>> import torch, functional_optim as fo
      >>> fo.hyperparams.materialize(torch.tensor(0.5, dtype=torch.float64))
      tensor(0.5000, dtype=torch.float64)
    """
    if not (isinstance(value, torch.Tensor) and value.dim() == 0 and torch.compiler.is_compiling()):
        return value
    return leafwise(lambda v: v, [value])[0]


_LOCAL = threading.local()


@contextlib.contextmanager
def tensors_unread() -> Iterator[None]:
    """Within this block validation never reads a tensor hyperparameter (no host sync).

    For wrappers that rebuild a transform from hyperparameter tensors held in state at
    every update (``inject_hyperparams``): the values were validated when first given.

    Example:
      >>> import torch, functional_optim as fo
      >>> with fo.hyperparams.tensors_unread():
      ...     fo.hyperparams.concrete(torch.tensor(0.5)) is None
      True
    """
    previous = getattr(_LOCAL, "unread", False)
    _LOCAL.unread = True
    try:
        yield
    finally:
        _LOCAL.unread = previous


def concrete(value: Any) -> float | None:
    """``value`` as a float when it can be read without a trace break, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"a tensor hyperparameter must have one element, got shape {tuple(value.shape)}")
        if torch.compiler.is_compiling() or _in_functorch_transform() or value.is_meta:
            return None
        if getattr(_LOCAL, "unread", False):
            return None
        if torch._C._functorch.is_functorch_wrapped_tensor(value):
            return None
        return float(value.detach().cpu().real.item()) if value.is_complex() else float(value.detach().item())
    return None


def check_number(name: str, value: Any, *, schedule_ok: bool = False) -> None:
    """Raise TypeError unless ``value`` is a number, a 0-d tensor (or a schedule if allowed)."""
    if schedule_ok and is_schedule(value):
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, torch.Tensor)):
        kinds = "a number, a 0-d tensor or a schedule" if schedule_ok else "a number or a 0-d tensor"
        raise TypeError(f"{name} must be {kinds}, got {type(value).__name__}")
    if isinstance(value, torch.Tensor) and value.dim() != 0:
        # torch's message where it has one (more than one element); a 1-element tensor of
        # another shape would broadcast a 0-d leaf (and its state) to its own shape
        first = f"Tensor {name} must be 1-element" if value.numel() != 1 else f"Invalid {name}"
        raise ValueError(f"{first}: {name} must be a number or a 0-d tensor (one element, no "
                         f"dimensions), got a tensor of shape {tuple(value.shape)} (reshape a "
                         "1-element tensor with .reshape(()))")
    concrete(value)


def check_range(name: str, value: Any, low: float | None = None, high: float | None = None, *,
                high_inclusive: bool = False, error: type[Exception] = ValueError,
                schedule_ok: bool = False) -> None:
    """Validate ``low <= value`` and ``value < high`` (or ``<=`` with ``high_inclusive``).

    Schedules and values that cannot be read without breaking a trace are not checked.
    """
    check_number(name, value, schedule_ok=schedule_ok)
    v = concrete(value)
    if v is None:
        return
    ok = (low is None or v >= low) and (high is None or (v <= high if high_inclusive else v < high))
    ok = ok and v == v  # NaN is never valid
    if not ok:
        lo = "" if low is None else f"{low} <= "
        hi = "" if high is None else (f" <= {high}" if high_inclusive else f" < {high}")
        raise error(f"Invalid {name}: {v} (expected {lo}{name}{hi})")
