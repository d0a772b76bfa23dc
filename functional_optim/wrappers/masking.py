"""``masked`` and ``freeze``: apply a transform to some leaves only.

A masked-out leaf is hidden from the inner transform: at that position the inner
transform sees ``None`` (as for a leaf without gradient), in the params given to
``init`` (so it allocates no state there) and in the updates, params and (optionally)
extra arguments given to ``update``. Trees keep their structure, so masks written for the
full params tree also work inside another ``masked`` (optax bug #271 cannot happen).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import optree

from ..base import GradientTransformation, Needs, declare, needs_of_all, set_to_zero
from .labels import resolve_mask

PyTree = Any
MaskSpec = Any  # a bool tree or prefix, a callable returning one, a glob string or list of globs


class MaskedState(NamedTuple):
    """State of :func:`masked`."""

    inner_state: Any  # the inner transform's state, built from the params with masked-out leaves None


def check_transform(name: str, tx: Any) -> None:
    if not isinstance(tx, GradientTransformation):
        raise TypeError(f"{name} must be a GradientTransformation, got {type(tx).__name__}")


def _flatten(tree: PyTree) -> tuple[list, optree.PyTreeSpec]:
    return optree.tree_flatten(tree, none_is_leaf=True)


def hide(leaves: list, keep: list[bool], spec: optree.PyTreeSpec) -> PyTree:
    """The tree of ``leaves`` with None wherever ``keep`` is False."""
    return optree.tree_unflatten(spec, [x if k else None for x, k in zip(leaves, keep)])


def mask_extras(extra: dict[str, Any], keep: list[bool], spec: optree.PyTreeSpec) -> dict[str, Any]:
    """Hide masked-out leaves of the extra arguments whose structure is the updates' one
    (optax's ``mask_compatible_extra_args``); ``donate`` is never touched."""
    out = {}
    for key, value in extra.items():
        if key != "donate":
            leaves, vspec = _flatten(value)
            if vspec == spec:
                value = hide(leaves, keep, spec)
        out[key] = value
    return out


def routed_update(inner: GradientTransformation, keep: list[bool], spec: optree.PyTreeSpec,
                  updates: list, inner_state: Any, params: list | None, extra: dict[str, Any],
                  mask_compatible_extra_args: bool, where: str) -> tuple[list, Any]:
    """Run ``inner`` on the kept leaves only; return all update leaves and the new state.

    Kept leaves come from ``inner``'s output, the others are ``updates`` unchanged.
    """
    inner_extra = mask_extras(extra, keep, spec) if mask_compatible_extra_args else extra
    new_updates, new_state = inner.update(
        hide(updates, keep, spec), inner_state,
        None if params is None else hide(params, keep, spec), **inner_extra)
    new_leaves, new_spec = _flatten(new_updates)
    if new_spec != spec:
        raise ValueError(f"{where} returned updates whose structure differs from its input: "
                         f"expected {spec}, got {new_spec}")
    return [n if k else u for n, u, k in zip(new_leaves, updates, keep)], new_state


def flatten_inputs(updates: PyTree, params: PyTree | None) -> tuple[list, list | None, optree.PyTreeSpec]:
    """Leaves of updates and params (None counted as a leaf), checked to have one structure."""
    u_leaves, spec = _flatten(updates)
    if params is None:
        return u_leaves, None, spec
    p_leaves, p_spec = _flatten(params)
    if p_spec != spec:
        raise ValueError(f"params does not match the structure of the updates: expected {spec}, "
                         f"got {p_spec}")
    return u_leaves, p_leaves, spec


def masked(inner: GradientTransformation, mask: MaskSpec | Callable[[PyTree], PyTree], *,
           mask_compatible_extra_args: bool = False) -> GradientTransformation:
    """Apply ``inner`` only to the leaves selected by ``mask``; **other updates pass through
    unchanged** (they are NOT zeroed: use :func:`freeze` to zero them).

    At masked-out leaves ``inner`` sees ``None``: ``inner.init`` gets the params with None
    there (so no state is allocated for them) and ``inner.update`` gets None updates and
    params there, exactly as for a leaf without gradient. The returned updates are
    ``inner``'s at selected leaves and the incoming ones elsewhere; a None update stays None.
    ``masked`` can be nested (the inner mask sees a tree of the same structure).

    ``mask`` is one of (see :mod:`functional_optim.wrappers.labels`):

    * a tree of Python bools with the params' structure, or a prefix of it
      (``{"encoder": False, "decoder": True}``); True: apply ``inner``;
    * a callable ``f(params) -> such a tree`` (called with ``params`` at init, and with
      ``params`` at update, or the updates when ``params`` is None);
    * a glob string or a list/tuple of glob strings matched against leaf names
      (``"*.bias"``, ``["*.bias", "*norm*"]``; names are key paths joined by ``"."``, as in
      ``dict(model.named_parameters())``). A pattern matching no leaf is a ValueError; use
      :func:`~functional_optim.wrappers.labels.mask_by_name` with ``allow_unmatched=True``
      to allow it.

    The mask is static: it must select the same leaves at init and at every update.

    Args:
      inner: the transform applied to the selected leaves.
      mask: the selection, as above.
      mask_compatible_extra_args: if True, extra keyword arguments whose tree structure is
        the updates' one (``None`` counted as a leaf) are masked the same way before
        ``inner`` sees them (optax's option, e.g. per-param tags); ``donate`` is never
        masked. Default False: extras are passed on unchanged.

    Example:
      >>> import torch, functional_optim as fo
      >>> from functional_optim.wrappers.masking import masked
      >>> tx = masked(fo.scale(10.0), {"w": True, "b": False})
      >>> params = {"w": torch.ones(2), "b": torch.ones(1)}
      >>> updates, state = tx.update({"w": torch.ones(2), "b": torch.ones(1)}, tx.init(params), params)
      >>> updates
      {'w': tensor([10., 10.]), 'b': tensor([1.])}
    """
    check_transform("inner", inner)
    if not isinstance(mask_compatible_extra_args, bool):
        raise TypeError("mask_compatible_extra_args must be a bool, got "
                        f"{type(mask_compatible_extra_args).__name__}")

    def init_fn(params):
        leaves, spec = _flatten(params)
        keep = resolve_mask(mask, params)
        return MaskedState(inner_state=inner.init(hide(leaves, keep, spec)))

    def update_fn(updates, state, params=None, **extra):
        if not isinstance(state, MaskedState):
            raise ValueError(f"state must be a MaskedState (made by masked(...).init), "
                             f"got {type(state).__name__}")
        u_leaves, p_leaves, spec = flatten_inputs(updates, params)
        keep = resolve_mask(mask, updates if params is None else params)
        new_leaves, inner_state = routed_update(
            inner, keep, spec, u_leaves, state.inner_state, p_leaves, extra,
            mask_compatible_extra_args, "masked's inner transform")
        return optree.tree_unflatten(spec, new_leaves), MaskedState(inner_state=inner_state)

    # a mask chooses leaves: each param must be its own leaf
    return declare(GradientTransformation(init_fn, update_fn), needs_of_all(inner, at_least=Needs.LEAVES))


def freeze(mask: MaskSpec | Callable[[PyTree], PyTree]) -> GradientTransformation:
    """Zero the updates of the leaves selected by ``mask`` (``masked(set_to_zero(), mask)``).

    Selected leaves get zero updates (a None update stays None); the others pass through
    unchanged. Put it after the optimizer, ``chain(fo.adam(...), freeze(mask))``, or mask
    the optimizer itself with ``partition`` so frozen leaves also get no optimizer state.
    ``mask`` accepts everything :func:`masked` does (bool tree or prefix, callable, globs).

    Args:
      mask: True at the leaves to freeze.

    Example:
      >>> import torch, functional_optim as fo
      >>> from functional_optim.wrappers.masking import freeze
      >>> tx = freeze("encoder.*")
      >>> params = {"encoder.weight": torch.ones(2), "head.weight": torch.ones(2)}
      >>> tx.update({"encoder.weight": torch.ones(2), "head.weight": torch.ones(2)}, tx.init(params))[0]
      {'encoder.weight': tensor([0., 0.]), 'head.weight': tensor([1., 1.])}
    """
    return masked(set_to_zero(), mask)
