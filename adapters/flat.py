"""Flat buffers: a group's params and grads packed per (device, dtype) into one tensor each.

Params and grads become views into the buffers (as DDP's ``gradient_as_bucket_view``
does), so an elementwise transform can update a whole bucket with a few big kernels, and
a compiled step's size and compile time depend on the number of buckets, not of params.
"""

from __future__ import annotations

from typing import Any

import torch

import functional_optim as fo

from . import state_io


def serves(tx: fo.GradientTransformation) -> bool:
    """Whether ``tx`` gives the same result on flat buffers as on per-param leaves."""
    return fo.needs(tx) <= fo.Needs.GLOBAL


def update(tx: fo.GradientTransformation, grads: list[torch.Tensor], state: Any,
           params: list[torch.Tensor], segments: Any, **extra: Any) -> tuple[list[torch.Tensor], Any]:
    """``tx.update`` on a layout's flat buffers (one per bucket); ``segments`` is the
    layout's :attr:`FlatLayout.segments`. Runs inside the engine's compiled step."""
    return tx.update(grads, state, params, **extra)


class Bucket:
    """Params of one (device, dtype) packed contiguously.

    Attributes:
      indices: positions (in the group's param list) of the packed params.
      offsets, numels, shapes: where each param lives in the buffers.
      params, grads: the flat buffers (1-D).
    """

    def __init__(self, params: list[torch.Tensor], indices: list[int]):
        self.indices = indices
        self.numels = [p.numel() for p in params]
        self.shapes = [p.shape for p in params]
        self.offsets = [sum(self.numels[:i]) for i in range(len(params))]
        total = sum(self.numels)
        first = params[0]
        self.params = torch.empty(total, dtype=first.dtype, device=first.device)
        self.grads = torch.zeros(total, dtype=first.dtype, device=first.device)
        with torch.no_grad():
            for p, view in zip(params, self.views(self.params)):
                view.copy_(p)
                p.data = view
        self.grad_views = self.views(self.grads)

    @property
    def numel(self) -> int:
        return self.params.numel()

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Per-param views (shaped like the params) of a flat tensor of this bucket."""
        return [flat[o:o + n].view(s) for o, n, s in zip(self.offsets, self.numels, self.shapes)]


class FlatLayout:
    """The buckets of one param group, and which params received a gradient since zero_grad."""

    def __init__(self, params: list[torch.Tensor]):
        self.num_params = len(params)
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(params):
            groups.setdefault((p.device, p.dtype), []).append(i)
        self.buckets = [Bucket([params[i] for i in idx], idx) for idx in groups.values()]
        self.bucket_of = {}
        for b, bucket in enumerate(self.buckets):
            for j, i in enumerate(bucket.indices):
                self.bucket_of[i] = (b, j)
        # what the engine passes to :func:`update` with the buckets (traced as graph inputs)
        self.segments: Any = [None] * len(self.buckets)
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
        """Per-param named state: param-sized views of the flat state, shared scalars."""
        bucket_entries = state_io.per_param(flat_state, len(self.buckets))
        out = []
        for i in range(self.num_params):
            b, j = self.bucket_of[i]
            bucket = self.buckets[b]
            entry = {}
            for name, value in bucket_entries[b].items():
                if value.dim() == 1 and value.numel() == bucket.numel and bucket.numel > 1:
                    entry[name] = bucket.views(value)[j]
                else:
                    entry[name] = value
            out.append(entry)
        return out

    def flat_entries(self, entries: list[dict[str, torch.Tensor]], flat_template: Any
                     ) -> tuple[list[dict[str, torch.Tensor]], bool]:
        """Per-bucket named state from per-param entries, and whether per-param scalars agreed."""
        template = state_io.per_param(flat_template, len(self.buckets))
        out, consistent = [], True
        for b, bucket in enumerate(self.buckets):
            entry = {}
            for name, like in template[b].items():
                values = [entries[i].get(name) for i in bucket.indices]
                if any(v is None for v in values):
                    continue
                if like.dim() == 1 and like.numel() == bucket.numel and bucket.numel > 1:
                    entry[name] = torch.cat([v.reshape(-1).to(like.dtype) for v in values])
                else:
                    first = values[0]
                    consistent &= all(torch.equal(first, v) for v in values[1:])
                    entry[name] = first
            out.append(entry)
        return out, consistent
