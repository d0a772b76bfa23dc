"""Step counters and the per-step scalars derived from them.

Counters are 0-d int32 tensors kept in state. Transforms whose math depends on how many
updates a parameter has received (bias corrections, torch's first-step momentum) keep
one counter per leaf, as torch.optim keeps one ``step`` per parameter: a leaf whose
gradient is None is skipped and its counter does not advance. Schedules use one
counter per transform. Scalars such as ``1 - b1**t`` are computed once per step and per
leaf as 0-d tensors (float64, like torch.optim's Python doubles), never per element.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import optree
import torch

from . import kernels as k

COUNT_DTYPE = torch.int32


def zero_count(device: torch.device | str | None = None) -> torch.Tensor:
    """A new 0-d int32 counter at zero."""
    return torch.zeros((), dtype=COUNT_DTYPE, device=device)


def first_device(tree: Any) -> torch.device | None:
    """The device of the first tensor leaf of ``tree`` (None when it has none)."""
    for leaf in optree.tree_leaves(tree):
        if isinstance(leaf, torch.Tensor):
            return leaf.device
    return None


def leaf_counts(params: Any) -> Any:
    """One zero counter per param leaf, on that leaf's device (None leaves stay None)."""
    return optree.tree_map(lambda p: None if p is None else zero_count(p.device), params,
                           none_is_leaf=True)


def increment(counts: Sequence[torch.Tensor], *, donate: bool = False) -> list[torch.Tensor]:
    """``count + 1`` for each counter (in place when donated)."""
    return k.add(counts, 1, donate=donate)


def per_leaf(fn: Callable[[torch.Tensor], Any], counts: Sequence[torch.Tensor],
             like: Sequence[torch.Tensor]) -> Any:
    """Per-step scalars for every leaf, computed once as vectors and split back per leaf.

    ``fn`` receives the leaves' step counts as one float vector (in the per-step scalar
    dtype of the leaves) and returns a vector or a tuple of vectors (plain numbers and
    0-d tensors are broadcast to every leaf); the result is the
    matching list (or tuple of lists) of 0-d tensors, one per leaf.

    Eagerly this is a handful of ops whatever the number of leaves. Under
    ``torch.compile`` the final ``stack`` makes inductor materialise the scalars in a
    tiny kernel of their own instead of recomputing ``b**t`` for every element of the
    big update kernel (measured 23 ms vs 3.6 ms for a 10M-element Adam step on CPU).
    """
    if not counts:
        out = fn(torch.zeros(0))
        return tuple([] for _ in out) if isinstance(out, tuple) else []
    devices = {c.device for c in counts}
    if len(devices) > 1:  # params on several devices: one computation per leaf
        parts = [per_leaf(fn, [c], [x]) for c, x in zip(counts, like)]
        if isinstance(parts[0], tuple):
            return tuple([p[j][0] for p in parts] for j in range(len(parts[0])))
        return [p[0] for p in parts]
    steps = torch.stack(list(counts)).to(k.scalar_dtype(like[0]))
    out = fn(steps)
    vectors = _materialize(*(out if isinstance(out, tuple) else (out,)), n=len(counts))
    return tuple(vectors) if isinstance(out, tuple) else vectors[0]


def _materialize(*vectors: torch.Tensor, n: int) -> list[list[torch.Tensor]]:
    # One concatenation (padded, so it is never a no-op that inductor folds away) makes
    # the scalars a buffer of their own; then each is split into per-leaf 0-d views.
    like = next(v for v in vectors if isinstance(v, torch.Tensor))
    parts = [torch.broadcast_to(torch.as_tensor(v, dtype=like.dtype, device=like.device), (n,))
             for v in vectors]
    flat = torch.cat(parts + [parts[0].new_zeros(1)]).unbind(0)
    return [list(flat[j * n:(j + 1) * n]) for j in range(len(vectors))]


def as_float(counts: Sequence[torch.Tensor], like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each counter as a float 0-d tensor in the per-step scalar dtype of the aligned tensor."""
    return per_leaf(lambda t: t, counts, like)


def bias_correction(decay: Any, steps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``1 - decay**t`` for each float step ``t`` (from :func:`as_float`), computed once."""
    if not steps:
        return []
    return _materialize(1 - decay ** torch.stack(list(steps)), n=len(steps))[0]


def torch_scalar_dtype() -> torch.dtype:
    """The dtype torch.optim keeps per-param scalar state in (``step``, NAdam's
    ``mu_product``, ASGD's ``eta`` and ``mu``): float64 when the default dtype is float64,
    else float32 (torch's ``_get_scalar_dtype``). Read when a state is initialised."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def per_leaf_with(fn: Callable[..., Any], counts: Sequence[torch.Tensor], like: Sequence[torch.Tensor],
                  *scalars: Sequence[torch.Tensor]) -> Any:
    """:func:`per_leaf` for scalars that also depend on per-leaf 0-d state.

    ``fn(t, *s)`` receives the step counts and each list of ``scalars`` (0-d tensors, one
    per leaf, such as NAdam's ``mu_product``) as vectors in the per-step scalar dtype
    (exactly: float32 and float64 values are kept). Outputs as in :func:`per_leaf`.
    """
    if counts and len({c.device for c in counts}) > 1:  # one computation per leaf
        parts = [per_leaf_with(fn, [c], [x], *[[s[i]] for s in scalars])
                 for i, (c, x) in enumerate(zip(counts, like))]
        if isinstance(parts[0], tuple):
            return tuple([p[j][0] for p in parts] for j in range(len(parts[0])))
        return [p[0] for p in parts]

    def with_state(t: torch.Tensor) -> Any:
        vectors = [torch.stack(list(s)).to(t.dtype) if len(s) else t.new_zeros(0) for s in scalars]
        return fn(t, *vectors)

    return per_leaf(with_state, counts, like)
