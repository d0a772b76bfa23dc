"""Param-group hyperparameters as the inputs of a transform factory.

Numbers become 0-d tensors owned by the adapter and refreshed from the group before
every step, so changing ``group['lr']`` (or any numeric hyperparameter) takes effect at
the next step without rebuilding the transform or recompiling a compiled step. Values
that shape the transform (bools, strings, schedules, and whether a number is exactly
zero: factories such as ``fo.sgd`` leave out a momentum or weight-decay stage at zero)
form the group's *structure key*; when the key changes the transform is rebuilt.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from numbers import Integral, Real
from typing import Any

import torch

import functional_optim as fo

# a learning rate reaching exactly zero (cosine schedules do) never changes structure
ZERO_INSENSITIVE = frozenset({"lr", "learning_rate"})


def factory_defaults(factory: Callable[..., Any]) -> dict[str, Any]:
    """The keyword arguments of ``factory`` and their defaults (``inspect._empty`` if required)."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError) as err:
        raise TypeError(f"cannot read the signature of transform factory {factory!r}") from err
    out = {}
    for name, param in signature.parameters.items():
        if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            out[name] = param.default
    return out


def _is_number(value: Any) -> bool:
    # integers are counts and sizes (max_iter, history_size, sync periods): static
    return isinstance(value, Real) and not isinstance(value, Integral)


def _is_scalar_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point()


def is_dynamic(value: Any) -> bool:
    """Floats and one-element float tensors are fed as tensors; everything else (ints
    included) is static."""
    return _is_number(value) or _is_scalar_tensor(value)


def structure_key(group: Mapping[str, Any], names: list[str]) -> tuple:
    """What about the group's hyperparameters decides the transform's structure."""
    key = []
    for name in names:
        value = group[name]
        if isinstance(value, (tuple, list)) and all(is_dynamic(v) for v in value):
            key.append((name, "seq", tuple(_zero_flag(name, v) for v in value)))
        elif is_dynamic(value):
            key.append((name, "dyn", _zero_flag(name, value)))
        elif callable(value) or isinstance(value, torch.Tensor):
            key.append((name, "obj", id(value)))
        else:
            key.append((name, "static", value))
    return tuple(key)


def _zero_flag(name: str, value: Any) -> bool | None:
    if name in ZERO_INSENSITIVE or isinstance(value, torch.Tensor):
        return None  # tensors stay tensors: their zero-ness can change in place anyway
    return value == 0


class GroupHyperparams:
    """The adapter-owned tensors that feed one group's transform.

    Args:
      group: the param group (hyperparameters by name).
      names: the factory's keyword names to take from the group.
      dtype: dtype of the hyperparameter tensors (float64 where the device has it).
      device: where the tensors live (the params' device).
    """

    def __init__(self, group: Mapping[str, Any], names: list[str], dtype: torch.dtype,
                 device: torch.device):
        self.names = names
        self.tensors: dict[str, Any] = {}
        for name in names:
            value = group[name]
            if isinstance(value, (tuple, list)) and value and all(is_dynamic(v) for v in value):
                self.tensors[name] = tuple(self._tensor(v, dtype, device) for v in value)
            elif is_dynamic(value):
                self.tensors[name] = self._tensor(value, dtype, device)

    @staticmethod
    def _tensor(value: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            t = value.detach().to(device=device, dtype=dtype).reshape(()).clone()
        else:
            t = torch.tensor(float(value), dtype=dtype, device=device)
        return _graph_input(t)

    def factory_kwargs(self, group: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments for the factory: our tensors for numbers, Python 0 kept as 0."""
        kwargs = {}
        for name in self.names:
            value = group[name]
            held = self.tensors.get(name)
            if held is None:
                kwargs[name] = value
            elif isinstance(held, tuple):
                kwargs[name] = tuple(v if _zero_flag(name, v) else t for v, t in zip(value, held))
            else:
                kwargs[name] = value if _zero_flag(name, value) else held
        return kwargs

    def number_kwargs(self, group: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments with every numeric hyperparameter as a Python number.

        For eager steps: Python numbers select torch's fused scalar kernels (``addcmul``
        with a ``value``), where 0-d tensors would cost extra passes over memory.
        Reads tensor values on the host, as torch.optim does for a tensor lr.
        """
        kwargs = {}
        for name in self.names:
            value = group[name]
            if isinstance(value, (tuple, list)) and value and all(is_dynamic(v) for v in value):
                kwargs[name] = tuple(_number(v) for v in value)
            else:
                kwargs[name] = _number(value) if is_dynamic(value) else value
        return kwargs

    def refresh(self, group: Mapping[str, Any]) -> None:
        """Copy the group's current values into the tensors (no host sync, no new tensors)."""
        for name, held in self.tensors.items():
            value = group[name]
            if isinstance(held, tuple):
                for t, v in zip(held, value):
                    _assign(t, v)
            else:
                _assign(held, value)


def _graph_input(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a frozen ``nn.Parameter`` (same storage): how a compiled step should see it.

    torch.compile (2.13) gives every plain 0-d float64 CPU input a symbolic float for its
    ``.item()`` (fake tensors' ``item_memo``), which AOT autograd's tensorify pass then
    cannot place and answers by restarting the whole dynamo analysis: every compiled step
    was traced twice. A Parameter is not a plain tensor for that rule, and its ops return
    plain tensors (it disables ``__torch_function__``), so it is a graph input like any
    other. Measured: the clip + AdamW chain's cold compile loses its second trace (about a
    third of the compile).
    """
    if t.dim() == 0 and t.device.type == "cpu" and t.dtype == torch.float64:
        return torch.nn.Parameter(t, requires_grad=False)
    return t


def _number(value: Any) -> Any:
    if not isinstance(value, torch.Tensor):
        return value
    number = value.item()
    # a zero tensor stays a tensor: factories leave out a stage only for a Python zero,
    # and the eager transform must have the structure (and state) of the tensor-fed one
    return value if number == 0 else number


def _assign(target: torch.Tensor, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        target.copy_(value.detach().reshape(()))
    else:
        target.fill_(value)


def check_transform(transform: Any) -> tuple[Callable[..., fo.GradientTransformation] | None,
                                             fo.GradientTransformation | None]:
    """Split ``transform`` into (factory, None) or (None, fixed transform)."""
    if isinstance(transform, fo.GradientTransformation):
        return None, transform
    if callable(transform):
        return transform, None
    raise TypeError("transform must be a GradientTransformation or a factory returning one, "
                    f"got {type(transform).__name__}")
