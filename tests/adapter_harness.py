"""Shared harness for the torch.optim adapter tests (``tests/test_adapter_*.py``).

A run builds float64 params (scalar, 1-D, 2-D, 4-D, and one param whose gradient is
None on every third step), splits them into param groups with per-group
hyperparameters, feeds the same random gradients (``p.grad = g.clone()``) to an
adapter optimizer and to torch's, and records the params after every step.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import optree
import torch
from torch.utils._python_dispatch import TorchDispatchMode

SHAPES: list[tuple[int, ...]] = [(), (5,), (4, 3), (3, 2, 2, 2), (6,)]
SOMETIMES = 4  # index of the param whose gradient is None on steps 0, 3, 6, ...
GROUPS = [[0, 1], [2, 3], [4]]  # the sometimes-None param alone: a flat group stays flat

Trajectory = list[list[torch.Tensor]]


def make_params(dtype: torch.dtype = torch.float64, seed: int = 0,
                shapes: Sequence[tuple[int, ...]] = SHAPES) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=dtype) for shape in shapes]


def make_grads(steps: int, dtype: torch.dtype = torch.float64, seed: int = 1,
               shapes: Sequence[tuple[int, ...]] = SHAPES, none_every: int | None = 3
               ) -> list[list[torch.Tensor | None]]:
    """``steps`` lists of gradients; param SOMETIMES gets None every ``none_every`` steps."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for step in range(steps):
        grads: list[torch.Tensor | None] = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
        if none_every and step % none_every == 0 and len(shapes) > SOMETIMES:
            grads[SOMETIMES] = None
        out.append(grads)
    return out


def leaves(values: Sequence[torch.Tensor]) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(v.detach().clone()) for v in values]


def groups(params: Sequence[torch.Tensor], overrides: Sequence[dict[str, Any]],
           layout: Sequence[Sequence[int]] = GROUPS) -> list[dict[str, Any]]:
    """Param-group dicts: ``layout[i]`` are the indices of group i, ``overrides[i]`` its options."""
    return [{"params": [params[i] for i in idx], **dict(o)} for idx, o in zip(layout, overrides)]


def set_grads(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None]) -> None:
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.clone()


def train(opt: torch.optim.Optimizer, params: Sequence[torch.Tensor],
          grads: Sequence[Sequence[torch.Tensor | None]],
          before_step: Callable[[int], None] | None = None,
          after_step: Callable[[int], None] | None = None,
          step_fn: Callable[[], Any] | None = None) -> Trajectory:
    """Params after every step (``step_fn``, default ``opt.step``), each fed ``p.grad = g.clone()`` (or None)."""
    trajectory = []
    for step, g in enumerate(grads):
        set_grads(params, g)
        if before_step is not None:
            before_step(step)
        (step_fn or opt.step)()
        if after_step is not None:
            after_step(step)
        trajectory.append([p.detach().clone() for p in params])
    return trajectory


def max_rel_diff(ours: Trajectory, ref: Trajectory) -> float:
    """Largest over steps and params of ``max|ours - ref| / max|ref|``."""
    worst = 0.0
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        for x, y in zip(a, b, strict=True):
            scale = y.abs().max().clamp_min(torch.finfo(y.dtype).tiny)
            worst = max(worst, ((x - y).abs().max() / scale).item())
    return worst


def max_tensor_rel_diff(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> float:
    return max_rel_diff([list(xs)], [list(ys)])


def roundtrip(state_dict: dict[str, Any]) -> dict[str, Any]:
    """``state_dict`` through ``torch.save`` and ``torch.load(weights_only=True)``."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def plain(value: Any) -> bool:
    """Whether ``value`` holds only tensors and plain Python values (numbers, str, None, containers)."""
    if isinstance(value, dict):
        return all(isinstance(k, (int, str)) and plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value) in (list, tuple) and all(plain(v) for v in value)
    return value is None or isinstance(value, (torch.Tensor, bool, int, float, str))


def state_tensors(opt: torch.optim.Optimizer, skip: Sequence[str] = ()) -> list[torch.Tensor]:
    """Every tensor of the optimizer's per-param state view (but keys in ``skip``), in a stable order."""
    out = []
    state = opt.state
    for group in opt.param_groups:
        for p in group["params"]:
            entry = state.get(p, {})
            out.extend(v for k, v in sorted(entry.items()) if isinstance(v, torch.Tensor) and k not in skip)
    return out


def assert_state_dicts_close(ours: dict[str, Any], ref: dict[str, Any], rtol: float = 0.0) -> None:
    """Same groups (keys and values), same state indices and keys, tensors within ``rtol``."""
    assert len(ours["param_groups"]) == len(ref["param_groups"])
    for a, b in zip(ours["param_groups"], ref["param_groups"]):
        assert sorted(a) == sorted(b)
        for key in b:
            assert _values_equal(a[key], b[key]), (key, a[key], b[key])
    assert sorted(ours["state"]) == sorted(ref["state"])
    for idx, b in ref["state"].items():
        a = ours["state"][idx]
        assert sorted(a) == sorted(b), (idx, sorted(a), sorted(b))
        for key, y in b.items():
            x = a[key]
            if isinstance(y, torch.Tensor):
                assert isinstance(x, torch.Tensor) and x.shape == y.shape and x.dtype == y.dtype, (idx, key)
                if rtol == 0 or not y.is_floating_point():
                    assert torch.equal(x, y), (idx, key)
                else:
                    scale = y.abs().max().clamp_min(torch.finfo(y.dtype).tiny)
                    assert ((x - y).abs().max() / scale).item() <= rtol, (idx, key)
            else:
                assert x == y, (idx, key, x, y)


def _values_equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_values_equal(x, y) for x, y in zip(a, b))
    return a == b


class Allocations(TorchDispatchMode):
    """Records every op output of at least ``min_numel`` elements that shares storage with
    none of the op's inputs: a fresh allocation (views and in-place/out= results alias)."""

    def __init__(self, min_numel):
        super().__init__()
        self.min_numel, self.fresh = min_numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in optree.tree_leaves((args, kwargs or {}))
                  if isinstance(t, torch.Tensor)}
        for t in optree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.numel() >= self.min_numel \
                    and t.untyped_storage().data_ptr() not in inputs:
                self.fresh.append((str(func), tuple(t.shape)))
        return out
