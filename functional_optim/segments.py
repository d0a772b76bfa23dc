"""Per-param reductions over flat buffers: segmented sums in a fixed number of kernels.

The torch.optim adapter packs many params into one flat buffer per (device, dtype) (see
``adapters/flat.py``). A transform that reduces per param (per-tensor norms, trust
ratios, per-param clipping: :attr:`~functional_optim.Needs.PER_PARAM`) runs there
unchanged: while :func:`activate` is in effect, the reduction kernels of
:mod:`functional_optim.kernels` return per-*segment* results, a segment being one
param's slice of the buffer.

Layout. Each param starts at a multiple of a block size ``B`` and is zero-padded to a
multiple of it, so the buffer viewed as ``(nblocks, B)`` has every block inside one
segment. A per-segment sum is then a row sum ``x.view(-1, B).sum(1)`` (one vectorised
kernel) followed by a sum of the consecutive blocks of each segment
(``torch.segment_reduce``, deterministic, over ``nblocks`` values):

    S_j = sum_{b : seg(b) = j} sum_{i < B} x[b, i]

A per-segment scalar ``s`` is broadcast back as ``s[seg(b)]`` of shape ``(nblocks, 1)``,
which multiplies, compares or selects with the ``(nblocks, B)`` view by ordinary
broadcasting (inductor fuses the tiny gather into the elementwise kernel). So a
transform's per-leaf 0-d scalars simply become ``(nblocks, 1)`` tensors, and its code
stays the same. Padding is masked out of every reduction (it is also kept at zero by
the adapter), so results equal the per-param ones up to the order of additions.

The number of kernels and the graph size do not depend on the number of params: the
segment tables are tensors (graph inputs), not Python constants.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

Tensor = torch.Tensor

__all__ = ["Segments", "block_size", "activate", "restore", "lookup", "lookup_buffers", "sums",
           "broadcast", "unpadded", "valid_mask"]

MAX_BLOCK = 64  # largest block size: 1.6% of index traffic per float32 element at most
MAX_WASTE = 1 / 8  # padding allowed, as a fraction of the elements


class Segments(NamedTuple):
    """How one flat buffer of ``nblocks * B`` elements splits into per-param segments.

    Attributes:
      block_segment: ``(nblocks,)`` int64, the segment of each block.
      block_counts: ``(S,)`` int64, the number of blocks of each segment (0 for an empty param).
      numels: ``(S,)`` float64, each segment's number of real (unpadded) elements.
      rsqrt_numels: ``(S,)`` float64, ``numel ** -0.5`` computed in Python doubles (NaN
        for an empty segment), as the per-param code computes it.
      block_valid: ``(nblocks,)`` int64, the number of real elements in each block
        (``B`` except in a segment's last block), or None when there is no padding.
    """

    block_segment: Tensor
    block_counts: Tensor
    numels: Tensor
    rsqrt_numels: Tensor
    block_valid: Tensor | None

    @staticmethod
    def build(numels: Sequence[int], block: int, device: torch.device | str | None = None) -> "Segments":
        """The segments of params with ``numels`` elements, each padded to a multiple of ``block``.

        Example:
          >>> from functional_optim.segments import Segments
          >>> s = Segments.build([3, 4], block=2)
          >>> s.block_segment.tolist(), s.block_counts.tolist(), s.block_valid.tolist()
          ([0, 0, 1, 1], [2, 2], [2, 1, 2, 2])
        """
        counts = [-(-n // block) for n in numels]
        seg, valid = [], []
        for j, (n, c) in enumerate(zip(numels, counts)):
            seg += [j] * c
            valid += [block] * (c - 1) + ([n - block * (c - 1)] if c else [])
        padded = any(v != block for v in valid)

        def long(values):
            return torch.tensor(values, dtype=torch.int64, device=device)

        return Segments(
            block_segment=long(seg), block_counts=long(counts),
            numels=torch.tensor([float(n) for n in numels], dtype=torch.float64, device=device),
            rsqrt_numels=torch.tensor([n ** -0.5 if n else float("nan") for n in numels],
                                      dtype=torch.float64, device=device),
            block_valid=long(valid) if padded else None)


def block_size(numels: Sequence[int], max_block: int = MAX_BLOCK, max_waste: float = MAX_WASTE) -> int:
    """The largest power of two ``B <= max_block`` whose padding (each param rounded up to a
    multiple of ``B``) adds at most ``max_waste`` of the elements.

    Bigger blocks mean fewer per-block index loads and shorter segment tables; a model of
    many tiny params gets small blocks rather than mostly padding.

    Example:
      >>> from functional_optim.segments import block_size
      >>> block_size([64 * 3 * 7 * 7, 64, 1000]), block_size([6, 8, 10, 12])
      (64, 4)
    """
    total = sum(numels)
    block = max_block
    while block > 1 and sum(-(-n // block) * block for n in numels) - total > max_waste * total:
        block //= 2
    return block


# ---------------------------------------------------------------------------------
# The active segmentation: set by the adapter's flat engine around ``tx.update``.
# A plain module global, written and read in traced code: dynamo tracks it as a side
# effect, so it works under ``torch.compile(fullgraph=True)`` without a graph break.

_ACTIVE: Any = None  # None, or a tuple of (shape, dtype, device, Segments) per buffer


def activate(buffers: Sequence[tuple[Tensor, Segments]]) -> Any:
    """Make the reduction kernels see tensors shaped like these ``(nblocks, B)`` buffer views
    as segmented buffers.

    Args:
      buffers: for each flat buffer, its ``(nblocks, B)`` view and its :class:`Segments`.

    Returns the previous setting, for :func:`restore` (call it in a ``finally``).
    """
    global _ACTIVE
    previous = _ACTIVE
    _ACTIVE = tuple((tuple(view.shape), view.dtype, view.device, segs) for view, segs in buffers)
    return previous


def restore(previous: Any) -> None:
    """Undo :func:`activate` (pass what it returned)."""
    global _ACTIVE
    _ACTIVE = previous


def lookup(xs: Sequence[Any]) -> list[Segments | None] | None:
    """The segments of each of ``xs`` (None for a tensor that is not a segmented buffer),
    or None when no segmentation is active or none of ``xs`` is a buffer.

    A list aligned with the buffers (the usual case: one tensor per buffer) is matched by
    position; otherwise each tensor by its shape (and, between buffers of one shape, by
    device and dtype), which must then be unambiguous.
    """
    active = _ACTIVE
    if not active:
        return None
    if len(xs) == len(active) and all(isinstance(x, Tensor) and tuple(x.shape) == a[0] for x, a in zip(xs, active)):
        return [a[3] for a in active]
    out, found = [], False
    for x in xs:
        matches = [a for a in active if isinstance(x, Tensor) and tuple(x.shape) == a[0]]
        if len(matches) > 1:
            matches = [a for a in matches if a[1] == x.dtype and a[2] == x.device]
        if len(matches) > 1:
            raise ValueError(f"a tensor of shape {tuple(x.shape)} matches several flat buffers; "
                             "pass one tensor per buffer, in the buffers' order")
        out.append(matches[0][3] if matches else None)
        found |= bool(matches)
    return out if found else None


def lookup_buffers(xs: Sequence[Any]) -> list[Segments | None] | None:
    """:func:`lookup` that also recognises a buffer given flat, as ``init`` sees it.

    ``update`` sees each buffer as its ``(nblocks, B)`` view, ``init`` as the 1-D buffer
    itself: a 1-D tensor with the number of elements of an active buffer (and, between
    buffers of one size, its device and dtype) counts as that buffer. For the kernels that
    make state (:func:`functional_optim.kernels.param_scalars`), not for reductions.

    Example:
      >>> import torch
      >>> from functional_optim import segments as seg
      >>> s = seg.Segments.build([3, 4], block=2)
      >>> previous = seg.activate([(torch.zeros(4, 2), s)])
      >>> seg.lookup_buffers([torch.zeros(8)]) == [s], seg.lookup([torch.zeros(8)])
      (True, None)
      >>> seg.restore(previous)
    """
    active = _ACTIVE
    if not active:
        return None

    def as_view(x: Any) -> Any:
        if not isinstance(x, Tensor) or x.dim() != 1:
            return x
        matches = [a for a in active if a[0][0] * a[0][1] == x.numel()]
        if len(matches) > 1:
            matches = [a for a in matches if a[1] == x.dtype and a[2] == x.device]
        return x.view(matches[0][0]) if len({a[0] for a in matches}) == 1 else x

    return lookup([as_view(x) for x in xs])


# ---------------------------------------------------------------------------------
# Segmented math on a ``(nblocks, B)`` view


def valid_mask(segs: Segments, block: int, device: torch.device) -> Tensor | None:
    """``(nblocks, B)`` bool, True at real elements (None when there is no padding)."""
    if segs.block_valid is None:
        return None
    return torch.arange(block, device=device) < segs.block_valid.unsqueeze(1)


def unpadded(x: Tensor, segs: Segments | None) -> Tensor:
    """``x`` with its padding replaced by zeros (``x`` itself when it has none)."""
    mask = None if segs is None else valid_mask(segs, x.shape[1], x.device)
    return x if mask is None else torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def sums(x: Tensor, segs: Segments, dtype: torch.dtype | None = None, *, square: bool = False) -> Tensor:
    """Per-segment sums of a ``(nblocks, B)`` view (of its squares with ``square``), shape ``(S,)``.

    ``dtype`` is the accumulation and result dtype (default ``x``'s). Padding is masked out.

    Example:
      >>> import torch
      >>> from functional_optim.segments import Segments, sums
      >>> s = Segments.build([3, 4], block=2)
      >>> x = torch.tensor([[1.0, 2.0], [3.0, 9.0], [1.0, 1.0], [1.0, 1.0]])  # 9.0 is padding
      >>> sums(x, s), sums(x, s, square=True)
      (tensor([6., 4.]), tensor([14.,  4.]))
    """
    values = x if dtype is None or x.dtype == dtype else x.to(dtype)
    values = unpadded(values * values if square else values, segs)
    blocks = values.sum(1)
    return torch.segment_reduce(blocks, "sum", lengths=segs.block_counts, unsafe=True)


def broadcast(values: Tensor, segs: Segments) -> Tensor:
    """Per-segment ``values`` ``(S,)`` as ``(nblocks, 1)``: the value of each block's segment,
    broadcastable against the ``(nblocks, B)`` view.

    Example:
      >>> import torch
      >>> from functional_optim.segments import Segments, broadcast
      >>> broadcast(torch.tensor([10.0, 20.0]), Segments.build([3, 4], block=2)).flatten()
      tensor([10., 10., 20., 20.])
    """
    return values[segs.block_segment].unsqueeze(1)
