"""Step counters and the per-step scalars derived from them.

Counters are 0-d int32 tensors kept in state. Transforms whose math depends on how many
updates a parameter has received (bias corrections, torch's first-step momentum) keep
one counter per leaf, as torch.optim keeps one ``step`` per parameter: a leaf whose
gradient is None is skipped and its counter does not advance. Schedules use one
counter per transform. Scalars such as ``1 - b1**t`` are computed once per step and per
leaf as 0-d tensors (float64, like torch.optim's Python doubles), never per element.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def as_float(counts: Sequence[torch.Tensor], like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each counter as a float scalar in the per-step scalar dtype of the aligned tensor."""
    return [c.to(k.scalar_dtype(x)) for c, x in zip(counts, like)]


def bias_correction(decay: Any, steps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``1 - decay**t`` for each float step ``t``."""
    return [1 - decay ** t for t in steps]
