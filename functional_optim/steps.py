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
    """``count + 1`` for each counter (in place when donated).

    In place and eagerly, counters of one dtype and device take one foreach add of a 0-d
    one: on CPU 4x faster than with a Python scalar (161 counters: 0.15 vs 0.57 ms), and
    exact for the int32 counters (the same 1 either way).
    """
    counts = list(counts)
    if (donate and len(counts) > 1 and k.writes_in_place(True) and not torch.compiler.is_compiling()
            and k._donated(counts) is counts and not k.any_dtensor(counts)
            and all(c.dtype == counts[0].dtype and c.device == counts[0].device for c in counts)):
        one = torch.ones((), dtype=counts[0].dtype, device=counts[0].device)
        torch._foreach_add_(counts, [one] * len(counts))
        return counts
    return k.add(counts, 1, donate=donate)


def per_leaf(fn: Callable[[torch.Tensor], Any], counts: Sequence[torch.Tensor],
             like: Sequence[torch.Tensor]) -> Any:
    """Per-step scalars for every leaf, computed once as vectors and split back per leaf.

    ``fn`` receives the leaves' step counts as one float vector (in the per-step scalar
    dtype of the leaves) and returns a vector or a tuple of vectors (plain numbers and
    0-d tensors are broadcast to every leaf); the result is the matching list (or tuple
    of lists) of 0-d tensors, one per leaf (see ``kernels.leafwise``).
    """
    return per_leaf_with(fn, counts, like)


def as_float(counts: Sequence[torch.Tensor], like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each counter as a float 0-d tensor in the per-step scalar dtype of the aligned tensor."""
    return per_leaf(lambda t: t, counts, like)


def bias_correction(decay: Any, steps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``1 - decay**t`` for each float step ``t`` (from :func:`as_float`), computed once."""
    return k.leafwise(lambda t: 1 - decay ** t, steps)


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
    return k.leafwise(fn, counts, *scalars, dtype=[k.scalar_dtype(x) for x in like])
