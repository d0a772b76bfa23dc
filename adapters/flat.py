"""Flat buffers: a group's params and grads packed per (device, dtype) into one tensor each.

Params and grads become views into the buffers (as DDP's ``gradient_as_bucket_view``
does), so an elementwise transform can update a whole bucket with a few big kernels, and
a compiled step's size and compile time depend on the number of buckets, not of params.

Each param starts at a multiple of a block size ``B`` (chosen per group by
:func:`functional_optim.segments.block_size`: at most 64, at most 1/8 of padding) and is
zero-padded up to the next one, so that per-param reductions (:attr:`Needs.PER_PARAM
<functional_optim.Needs>`) run as segmented reductions over the buffer viewed as
``(nblocks, B)`` (see :mod:`functional_optim.segments`). The padding is zero in the
params and grads, masked out of every reduction, and written as zero in the updates and
the state at every step.

State holding one scalar per param (made with :func:`kernels.param_scalars
<functional_optim.kernels.param_scalars>`, e.g. NovoGrad's second moment) lives on the
buffers as one ``(nblocks, 1)`` tensor per bucket, every block of a param holding that
param's value (:func:`init`); ``state_dict`` shows each param's value as a 0-d tensor.
"""

from __future__ import annotations

from typing import Any

import optree
import torch

import functional_optim as fo
from functional_optim import segments as seg

from . import state_io


def serves(tx: fo.GradientTransformation, layout: FlatLayout | None = None) -> bool:
    """Whether ``tx`` gives the same result on flat buffers as on per-param leaves: it needs
    at most per-param reductions (``fo.needs(tx) <= fo.Needs.PER_PARAM``), which run
    segmented. Transforms that tell leaves apart by position or label (``Needs.LEAVES``)
    or by shape (``Needs.MATRIX``) are not served. A ``layout`` packed without segments
    serves at most global reductions."""
    most = fo.Needs.GLOBAL if layout is not None and not layout.segmented else fo.Needs.PER_PARAM
    return fo.needs(tx) <= most


def init(tx: fo.GradientTransformation, buffers: list[torch.Tensor], segments: Any) -> Any:
    """``tx.init`` on a layout's flat buffers (one per bucket); ``segments`` is the layout's
    :attr:`FlatLayout.segments`.

    The segmentation is active during ``init`` (the transform sees the 1-D buffers as
    always), so per-param scalar state made with :func:`kernels.param_scalars
    <functional_optim.kernels.param_scalars>` comes out as one ``(nblocks, 1)`` tensor per
    bucket (one value per block, see :func:`is_param_scalars`); other state is as
    ``tx.init(buffers)`` makes it (bucket-sized 1-D tensors, shared 0-d scalars).
    """
    if all(s is None for s in segments):
        return tx.init(buffers)
    view = block_view(buffers, segments)
    previous = seg.activate([(view(b), s) for b, s in zip(buffers, segments)])
    try:
        return tx.init(buffers)
    finally:
        seg.restore(previous)


def is_param_scalars(value: torch.Tensor, bucket: Bucket) -> bool:
    """Whether a state tensor of ``bucket`` holds one scalar per param, as ``(nblocks, 1)``
    (the flat form of per-param 0-d state, see :func:`init`). Bucket-sized state is 1-D
    and shared scalars 0-d, so the shape tells them apart whatever the block size."""
    return bucket.segments is not None and value.dim() == 2 and tuple(value.shape) == (bucket.nblocks, 1)


def update(tx: fo.GradientTransformation, grads: list[torch.Tensor], state: Any,
           params: list[torch.Tensor], segments: Any, **extra: Any) -> tuple[list[torch.Tensor], Any]:
    """``tx.update`` on a layout's flat buffers (one per bucket); ``segments`` is the
    layout's :attr:`FlatLayout.segments`. Runs inside the engine's compiled step.

    An elementwise or global transform on unpadded buffers sees them as they are. Otherwise
    the transform sees every buffer (grads, params and bucket-sized state) as its
    ``(nblocks, B)`` view with the segmentation active, so the reduction kernels compute
    per param; the updates and state come back 1-D with their padding zeroed.
    """
    if all(s is None for s in segments):  # a layout made for elementwise/global math
        return tx.update(grads, state, params, **extra)
    padded = any(s.block_valid is not None for s in segments)
    if fo.needs(tx) <= fo.Needs.GLOBAL and not padded:
        return tx.update(grads, state, params, **extra)
    view = block_view(grads, segments)
    views = [view(g) for g in grads]
    previous = seg.activate(list(zip(views, segments)))
    try:
        updates, new_state = tx.update(views, optree.tree_map(view, state), [view(p) for p in params], **extra)
    finally:
        seg.restore(previous)
    updates = [u if u is None else _flat(u, g, s) for u, g, s in zip(updates, grads, segments)]
    return updates, _flat_state(new_state, state, grads, segments)


def block_view(grads: list[torch.Tensor], segments: list[seg.Segments]):
    """A function giving a bucket-sized 1-D tensor's ``(nblocks, B)`` view (other values,
    and tensors already in that shape, as they are): one block size per layout, so the view
    follows from the numel. ``grads``: the layout's grad buffers (1-D or viewed)."""
    shapes = {g.numel(): _shape_2d(g, s) for g, s in zip(grads, segments)}

    def view(t: Any) -> Any:
        if isinstance(t, torch.Tensor) and t.dim() == 1 and t.numel() in shapes:
            return t.view(shapes[t.numel()])
        return t

    return view


def _flat_state(new_state: Any, state: Any, grads: list[torch.Tensor], segments: list[seg.Segments]) -> Any:
    """The new state with each 2-D view of a bucket-sized leaf back in 1-D, padding zeroed."""
    leaves, spec = optree.tree_flatten(new_state)
    out = []
    for new, old in zip(leaves, optree.tree_leaves(state)):
        if isinstance(new, torch.Tensor) and new.dim() == 2 and old.dim() in (1, 2) \
                and new.numel() == old.numel() and _bucket_sized(old, grads):
            new = _flat(new, old, _segments_of(old, grads, segments))
        out.append(new)
    return optree.tree_unflatten(spec, out)


def _bucket_sized(t: torch.Tensor, grads: list[torch.Tensor]) -> bool:
    # a bucket-sized state tensor (1-D, or already viewed like the grads), not a
    # (nblocks, 1) per-param scalar
    return t.dim() == 1 or any(t.shape == g.shape for g in grads)


def _shape_2d(buffer: torch.Tensor, segs: seg.Segments) -> tuple[int, int]:
    nblocks = segs.block_segment.shape[0]
    return nblocks, buffer.numel() // max(nblocks, 1)


def _flat(new: torch.Tensor, like: torch.Tensor, segs: seg.Segments | None) -> torch.Tensor:
    """A ``(nblocks, B)`` result back in ``like``'s 1-D form, its padding zeroed."""
    return seg.unpadded(new, segs).reshape(like.shape)


def _segments_of(t: torch.Tensor, grads: list[torch.Tensor], segments: list[seg.Segments]
                 ) -> seg.Segments | None:
    """The segments of the bucket a bucket-sized state tensor belongs to: the bucket of its
    numel, or of its numel, device and dtype if several have that numel (None if still
    ambiguous: its padding is then left as the transform wrote it, masked in reductions)."""
    same = [(g, s) for g, s in zip(grads, segments) if g.numel() == t.numel()]
    if len(same) > 1:
        same = [(g, s) for g, s in same if g.device == t.device and g.dtype == t.dtype]
    return same[0][1] if len(same) == 1 else None


class Bucket:
    """Params of one (device, dtype) packed contiguously, each starting at a multiple of
    ``block`` and zero-padded up to the next one.

    Attributes:
      indices: positions (in the group's param list) of the packed params.
      offsets, numels, shapes: where each param lives in the buffers.
      params, grads: the flat buffers (1-D, ``numel`` elements, padding included).
      segments: the :class:`~functional_optim.segments.Segments` of the buffers.
    """

    def __init__(self, params: list[torch.Tensor], indices: list[int], block: int = 1,
                 segmented: bool = True):
        self.indices = indices
        self.numels = [p.numel() for p in params]
        self.shapes = [p.shape for p in params]
        padded = [-(-n // block) * block for n in self.numels]
        self.offsets = [sum(padded[:i]) for i in range(len(params))]
        total = sum(padded)
        first = params[0]
        # zeros: the padding must start (and stays) zero
        self.params = torch.zeros(total, dtype=first.dtype, device=first.device)
        self.grads = torch.zeros(total, dtype=first.dtype, device=first.device)
        with torch.no_grad():
            for p, view in zip(params, self.views(self.params)):
                view.copy_(p)
                p.data = view
        self.grad_views = self.views(self.grads)
        self.segments = seg.Segments.build(self.numels, block, first.device) if segmented else None
        self.block = block
        self.nblocks = total // block
        # each param's first block (None for an empty param: it has none); no block is
        # padding only, so every block belongs to one param
        self.first_blocks = [o // block if n else None for o, n in zip(self.offsets, self.numels)]

    @property
    def numel(self) -> int:
        return self.params.numel()

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Per-param views (shaped like the params) of a flat tensor of this bucket."""
        return [flat[o:o + n].view(s) for o, n, s in zip(self.offsets, self.numels, self.shapes)]

    def pack(self, values: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """A flat tensor (dtype and device of ``like``) holding per-param ``values``, padding zero."""
        out = torch.zeros(self.numel, dtype=like.dtype, device=like.device)
        for view, v in zip(self.views(out), values):
            view.copy_(v.reshape(view.shape))
        return out

    def scalar(self, value: torch.Tensor, j: int) -> torch.Tensor:
        """Param ``j``'s 0-d scalar from per-param scalar state ``(nblocks, 1)`` (see
        :func:`is_param_scalars`): the value of its first block (a view), 0 for an empty param."""
        b = self.first_blocks[j]
        return value[b, 0] if b is not None else value.new_zeros(())

    def spread(self, values: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """Per-param 0-d ``values`` as per-param scalar state shaped, typed and placed like
        ``like`` (``(nblocks, 1)``): every block of a param holds its value."""
        out = torch.empty(like.shape, dtype=like.dtype, device=like.device)
        for j, (b, n) in enumerate(zip(self.first_blocks, self.numels)):
            if b is not None:
                out[b:b + -(-n // self.block)] = values[j].reshape(()).to(like.device, like.dtype)
        return out


class FlatLayout:
    """The buckets of one param group, and which params received a gradient since zero_grad."""

    def __init__(self, params: list[torch.Tensor], segmented: bool = True):
        """Pack ``params``. ``segmented=False`` (for transforms needing at most global
        reductions) packs them without padding or segment tables: the step then runs on
        the plain buffers, and a later per-param transform needs a new engine."""
        self.num_params = len(params)
        self.segmented = segmented
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(params):
            groups.setdefault((p.device, p.dtype), []).append(i)
        # one block size for the group: a bucket-sized tensor's 2-D view follows from its numel
        self.block = seg.block_size([p.numel() for p in params]) if segmented else 1
        self.buckets = [Bucket([params[i] for i in idx], idx, self.block, segmented) for idx in groups.values()]
        self.bucket_of = {}
        for b, bucket in enumerate(self.buckets):
            for j, i in enumerate(bucket.indices):
                self.bucket_of[i] = (b, j)
        # what the engine passes to :func:`update` with the buckets (tensors: graph inputs)
        self.segments: list[seg.Segments | None] = [b.segments for b in self.buckets]
        self.received = [False] * len(params)
        self._hooks = [p.register_post_accumulate_grad_hook(self._hook(i)) for i, p in enumerate(params)]

    def _hook(self, i: int):
        def mark(param: torch.Tensor) -> None:
            self.received[i] = True
        return mark

    def remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()

    def gather_grads(self, params: list[torch.Tensor]) -> list[bool]:
        """Make every present grad live in the grad buffer; return which params have one.

        A grad that autograd accumulated into its view is present if a backward touched it
        since the last ``zero_grad``; a grad tensor set by other means is copied into the
        buffer (and ``p.grad`` re-pointed at the view, same values).
        """
        present = []
        for i, p in enumerate(params):
            b, j = self.bucket_of[i]
            view = self.buckets[b].grad_views[j]
            g = p.grad
            if g is None:
                present.append(False)
            elif g is view:
                present.append(self.received[i])
            elif g.is_sparse:
                present.append(True)  # cannot live in a dense buffer: the caller falls back
            else:
                with torch.no_grad():
                    view.copy_(g)
                p.grad = view
                self.received[i] = True  # like an accumulated grad: present until zero_grad
                present.append(True)
        return present

    def zero_grads(self, params: list[torch.Tensor], set_to_none: bool = True) -> None:
        """Zero the grad buffers in place and point every present grad at its view.

        With ``set_to_none`` the params then count as having no gradient until a backward
        reaches them (torch: ``p.grad is None``); without it, a param that had a gradient
        keeps a zero one, which the next step applies (as torch does).
        """
        for bucket in self.buckets:
            bucket.grads.zero_()
        for i, p in enumerate(params):
            b, j = self.bucket_of[i]
            if p.grad is not None and p.grad is not self.buckets[b].grad_views[j]:
                p.grad = self.buckets[b].grad_views[j]  # a grad not yet gathered: drop it
                self.received[i] = True
            if set_to_none:
                self.received[i] = False

    # -- state conversion between the flat form and the per-param form --------------

    def leaf_entries(self, flat_state: Any) -> list[dict[str, torch.Tensor]]:
        """Per-param named state: param-sized views of the flat state, each param's 0-d
        value of per-param scalar state (its first block's, a view), shared scalars."""
        bucket_entries = state_io.per_param(flat_state, len(self.buckets))
        out = []
        for i in range(self.num_params):
            b, j = self.bucket_of[i]
            bucket = self.buckets[b]
            entry = {}
            for name, value in bucket_entries[b].items():
                if value.dim() == 1 and value.numel() == bucket.numel and bucket.numel > 1:
                    entry[name] = bucket.views(value)[j]
                elif is_param_scalars(value, bucket):
                    entry[name] = bucket.scalar(value, j)
                else:
                    entry[name] = value
            out.append(entry)
        return out

    def flat_entries(self, entries: list[dict[str, torch.Tensor]], flat_template: Any
                     ) -> tuple[list[dict[str, torch.Tensor]], bool]:
        """Per-bucket named state from per-param entries, and whether the flat form holds
        them: scalars shared by a bucket must agree between its params, and per-param scalar
        state (spread over each param's blocks) must be 0 for an empty param (it has no block)."""
        template = state_io.per_param(flat_template, len(self.buckets))
        out, consistent = [], True
        for b, bucket in enumerate(self.buckets):
            entry = {}
            for name, like in template[b].items():
                values = [entries[i].get(name) for i in bucket.indices]
                if any(v is None for v in values):
                    continue
                if like.dim() == 1 and like.numel() == bucket.numel and bucket.numel > 1:
                    entry[name] = bucket.pack(values, like)
                elif is_param_scalars(like, bucket):
                    values = [torch.as_tensor(v).reshape(-1) for v in values]
                    held = all(v.numel() == 1 for v in values) and not any(
                        bool(v.ne(0).any()) for v, first in zip(values, bucket.first_blocks) if first is None)
                    consistent &= held
                    if held:
                        entry[name] = bucket.spread(values, like)
                else:
                    first = values[0]
                    consistent &= all(torch.equal(first, v) for v in values[1:])
                    entry[name] = first
            out.append(entry)
        return out, consistent
