"""Shared harness for step-by-step parity tests against a reference optimizer.

A parity test builds a param tree with scalar, 1-D, 2-D and 4-D leaves plus one leaf
whose gradient is None on some steps, feeds the same random gradients to a torch.optim
optimizer and to a functional transform, and compares the params after every step.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

import functional_optim as fo

SHAPES: dict[str, tuple[int, ...]] = {
    "scalar": (), "vector": (5,), "matrix": (4, 3), "conv": (3, 2, 2, 2), "sometimes": (6,),
}
SOMETIMES = "sometimes"  # this leaf's gradient is None on every third step


def make_params(dtype: torch.dtype = torch.float64, seed: int = 0,
                shapes: dict[str, tuple[int, ...]] = SHAPES) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=gen, dtype=dtype) for name, shape in shapes.items()}


def make_grads(params: dict[str, torch.Tensor], steps: int, seed: int = 1,
               none_every: int = 3) -> list[dict[str, torch.Tensor | None]]:
    """``steps`` random gradient trees; the SOMETIMES leaf is None every ``none_every`` steps."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for step in range(steps):
        grads = {}
        for name, p in params.items():
            g = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            grads[name] = None if name == SOMETIMES and step % none_every == 0 else g
        out.append(grads)
    return out


def run_torch(cls: type, kwargs: dict[str, Any], params: dict[str, torch.Tensor],
              grads: Sequence[dict[str, torch.Tensor | None]]) -> list[dict[str, torch.Tensor]]:
    """Params after every step of ``cls(params, **kwargs)`` fed ``grads``."""
    leaves = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    opt = cls(list(leaves.values()), **kwargs)
    trajectory = []
    for g in grads:
        for n, leaf in leaves.items():
            leaf.grad = None if g[n] is None else g[n].clone()
        opt.step()
        trajectory.append({n: leaf.detach().clone() for n, leaf in leaves.items()})
    return trajectory


def run_functional(tx: fo.GradientTransformation, params: dict[str, torch.Tensor],
                   grads: Sequence[dict[str, torch.Tensor | None]], *, donate: bool = False
                   ) -> list[dict[str, torch.Tensor]]:
    """Params after every step of the functional transform fed ``grads``."""
    state = tx.init(params)
    trajectory = []
    for g in grads:
        g = {n: None if v is None else v.clone() for n, v in g.items()}  # donation may overwrite
        updates, state = tx.update(g, state, params, donate=donate)
        params = fo.apply_updates(params, updates)
        trajectory.append(params)
    return trajectory


def max_rel_diff(ours: Sequence[dict[str, torch.Tensor]], ref: Sequence[dict[str, torch.Tensor]]) -> float:
    """Largest over steps and leaves of ``max|ours - ref| / max|ref|``."""
    worst = 0.0
    for a, b in zip(ours, ref, strict=True):
        for name in b:
            scale = b[name].abs().max().clamp_min(torch.finfo(b[name].real.dtype).tiny)
            worst = max(worst, ((a[name] - b[name]).abs().max() / scale).item())
    return worst


def max_ulps_per_step(ours: Sequence[dict[str, torch.Tensor]], ref: Sequence[dict[str, torch.Tensor]]) -> float:
    """Largest ``max|ours - ref| / (eps * max|ref|) / step`` (float32 drift per step)."""
    worst = 0.0
    for step, (a, b) in enumerate(zip(ours, ref, strict=True), start=1):
        for name in b:
            eps = torch.finfo(b[name].dtype).eps
            scale = b[name].abs().max().clamp_min(torch.finfo(b[name].dtype).tiny)
            worst = max(worst, ((a[name] - b[name]).abs().max() / (eps * scale) / step).item())
    return worst


def pairwise(options: dict[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """A small set of option dicts covering every pair of values of every two options."""
    names = list(options)
    uncovered = {(a, va, b, vb) for a, b in itertools.combinations(names, 2)
                 for va in options[a] for vb in options[b]}
    cases: list[dict[str, Any]] = []
    while uncovered:
        best, best_cover = None, -1
        for combo in itertools.product(*(options[n] for n in names)):
            case = dict(zip(names, combo))
            cover = sum((a, case[a], b, case[b]) in uncovered for a, b in itertools.combinations(names, 2))
            if cover > best_cover:
                best, best_cover = case, cover
        cases.append(best)
        uncovered -= {(a, best[a], b, best[b]) for a, b in itertools.combinations(names, 2)}
    return cases or [{}]


def case_id(case: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in case.items()) or "defaults"
