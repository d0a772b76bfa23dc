"""Applying updates to params: pure, or in place for callers that own the params."""

from __future__ import annotations

import torch

from . import kernels as k
from .tree import PyTree, select


def apply_updates(params: PyTree, updates: PyTree) -> PyTree:
    """New params ``p + u``, cast back to each param's dtype; None updates keep ``p``.

    Args:
      params: the current params tree (not modified).
      updates: the updates tree, same structure, possibly with None leaves.

    Example:
      >>> import torch, functional_optim as fo
      >>> fo.apply_updates({"w": torch.ones(2)}, {"w": torch.full((2,), -0.5)})
      {'w': tensor([0.5000, 0.5000])}
    """
    sel = select(updates, params=params)
    ps = sel["params"]
    new = [(p + u).to(p.dtype) for p, u in zip(ps, sel.updates)]
    return sel.rebuild(new, "params")


def apply_updates_(params: PyTree, updates: PyTree, scale: float = 1.0) -> PyTree:
    """Add ``scale * updates`` into ``params`` in place (the caller owns the params) and
    return them.

    Runs under ``torch.no_grad()``; None updates leave their param untouched. ``scale``
    (a Python number, default 1) is applied in the same pass as the addition (one
    rounding, ``p.add_(u, alpha=scale)``) where ``u`` has ``p``'s dtype, else to ``u``
    before it is cast to ``p``'s dtype.

    Example:
      >>> import torch, functional_optim as fo
      >>> w = torch.ones(2)
      >>> _ = fo.apply_updates_([w], [torch.ones(2)])
      >>> w
      tensor([2., 2.])
    """
    sel = select(updates, params=params)
    with torch.no_grad():
        ps = sel["params"]
        same = [i for i, (p, u) in enumerate(zip(ps, sel.updates)) if p.dtype == u.dtype]
        k.add([ps[i] for i in same], [sel.updates[i] for i in same], scale, donate=True)
        for p, u in zip(ps, sel.updates):
            if p.dtype != u.dtype:
                p.add_((u if scale == 1 else u * scale).to(p.dtype))
    return params
