"""Transforms that repair or constrain values: NaN updates, non-negative params."""

from __future__ import annotations

from typing import Any, NamedTuple

import optree
import torch

from .. import kernels as k
from ..base import EmptyState, GradientTransformation, mark_elementwise
from ..tree import select


class ZeroNansState(NamedTuple):
    """State of :func:`zero_nans`."""

    found_nan: Any  # tree like params of 0-d bools: whether the leaf's last update held a NaN


NonNegativeParamsState = EmptyState  # state of keep_params_nonnegative (optax's name)


def zero_nans() -> GradientTransformation:
    """Replace NaN update elements by zero, and record per leaf whether there were any.

    ``u = where(isnan(u), 0, u)`` (a complex element with a NaN component becomes 0);
    infinities are kept. ``state.found_nan`` mirrors the params: one 0-d bool per leaf,
    True when that leaf's last update held a NaN. The transform does not read it; it is
    there to be logged (``fo.tree.get(state, "found_nan")``). A leaf whose update is None
    keeps its previous flag.

    Over the torch.optim adapter's flat buffers the updates are the same, and the flags
    are per buffer instead of per param.

    Example:
      >>> import torch, functional_optim as fo
      >>> from functional_optim.transforms.numerics import zero_nans
      >>> tx = zero_nans()
      >>> params = {"w": torch.zeros(3), "b": torch.zeros(1)}
      >>> u, state = tx.update({"w": torch.tensor([1.0, float("nan"), -2.0]), "b": torch.ones(1)},
      ...                      tx.init(params))
      >>> u["w"], state.found_nan["w"], state.found_nan["b"]
      (tensor([ 1.,  0., -2.]), tensor(True), tensor(False))
    """

    def init_fn(params):
        return ZeroNansState(found_nan=optree.tree_map(
            lambda p: None if p is None else torch.zeros((), dtype=torch.bool, device=p.device),
            params, none_is_leaf=True))

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        sel = select(updates, found_nan=state.found_nan)
        masks = [torch.isnan(u) for u in sel.updates]
        found = [m.any() for m in masks]
        out = k.masked_fill(sel.updates, masks, 0.0, donate=donate)
        return sel.rebuild(out), ZeroNansState(found_nan=sel.rebuild(found, "found_nan"))

    return mark_elementwise(GradientTransformation(init_fn, update_fn))


def keep_params_nonnegative() -> GradientTransformation:
    """Change the updates so that ``params + updates >= 0`` elementwise.

    ``u = where(p + u < 0, -p, u)``: an update that would make a param negative moves it
    to exactly 0 instead (a param that is already negative is moved to 0 as well). Put it
    last in a chain, after the learning rate. Needs ``params``; real params only (torch
    has no order on complex numbers).

    Example:
      >>> import torch, functional_optim as fo
      >>> from functional_optim.transforms.numerics import keep_params_nonnegative
      >>> tx = keep_params_nonnegative()
      >>> params = torch.tensor([1.0, 0.5, 2.0])
      >>> tx.update(torch.tensor([-0.5, -1.0, 1.0]), tx.init(params), params)[0]
      tensor([-0.5000, -0.5000,  1.0000])
    """

    def init_fn(params):
        del params
        return NonNegativeParamsState()

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del extra
        if params is None:
            raise ValueError("keep_params_nonnegative needs params: call update(updates, state, params)")
        sel = select(updates, params=params)
        us, ps = sel.updates, sel["params"]
        for p in ps:
            if p.is_complex():
                raise TypeError(f"keep_params_nonnegative needs real params, got a {p.dtype} leaf")
        after = k.add(ps, us)
        # where(p + u < 0, -p, u); a NaN sum keeps u
        out = k.select_by_sign(after, us, k.neg(ps), us, out=us if donate else None)
        return sel.rebuild(out), state

    return mark_elementwise(GradientTransformation(init_fn, update_fn))
