"""Naming a transform's state per parameter, for ``state_dict``, loading and migration.

A group's functional state is a pytree built by ``init(params_list)``. Its tensor leaves
are either *per-parameter* (inside a list mirroring the params, e.g. Adam's ``mu``) or
*group-wide* (e.g. a schedule's counter). Each leaf gets a stable name
``"<StateClass>.<field>"`` (``#2``, ``#3`` for repeats), independent of where the
transform sits in a chain, so a state saved by one chain loads into another that has
the same transforms, and a state survives a rebuild that inserts a transform.
"""

from __future__ import annotations

from typing import Any

import optree
import torch


class Slot:
    """Where a state leaf lives: its name and its param position (None: group-wide)."""

    __slots__ = ("name", "index")

    def __init__(self, name: str, index: int | None):
        self.name, self.index = name, index

    def __repr__(self) -> str:
        return f"Slot({self.name!r}, {self.index})"


def slots(state: Any, num_params: int) -> Any:
    """A tree shaped like ``state`` whose tensor leaves are replaced by :class:`Slot`."""
    seen: dict[str, int] = {}

    def unique(name: str) -> str:
        seen[name] = seen.get(name, 0) + 1
        return name if seen[name] == 1 else f"{name}#{seen[name]}"

    def walk(node: Any, name: str) -> Any:
        if isinstance(node, torch.Tensor):
            return Slot(unique(name), None)
        if isinstance(node, list) and len(node) == num_params and all(
                x is None or isinstance(x, torch.Tensor) for x in node):
            base = unique(name)
            return [None if x is None else Slot(base, i) for i, x in enumerate(node)]
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            cls = type(node).__name__
            return type(node)(*(walk(v, f"{cls}.{f}") for f, v in zip(node._fields, node)))
        if isinstance(node, dict):
            return type(node)((key, walk(v, name)) for key, v in node.items())
        if isinstance(node, (list, tuple)):
            return type(node)(walk(v, name) for v in node)
        return node

    return walk(state, "state")


def _pairs(state: Any, num_params: int) -> list[tuple[Slot, torch.Tensor]]:
    leaves = optree.tree_leaves(state)
    names = optree.tree_leaves(slots(state, num_params), is_leaf=lambda x: isinstance(x, Slot))
    names = [s for s in names if isinstance(s, Slot)]
    if len(names) != len(leaves):
        raise TypeError("optimizer state holds leaves that are not tensors; cannot name them")
    return list(zip(names, leaves))


def per_param(state: Any, num_params: int) -> list[dict[str, torch.Tensor]]:
    """One ``{name: tensor}`` dict per param; group-wide leaves appear in every dict."""
    out: list[dict[str, torch.Tensor]] = [{} for _ in range(num_params)]
    for slot, leaf in _pairs(state, num_params):
        targets = range(num_params) if slot.index is None else [slot.index]
        for i in targets:
            out[i][slot.name] = leaf
    return out


def rebuild(template: Any, num_params: int, entries: list[dict[str, Any]],
            convert=lambda value, like: value) -> Any:
    """``template`` with each leaf replaced by the entry of the same name (if present).

    ``entries[i]`` holds param ``i``'s named values; group-wide leaves are taken from the
    first param that has them. ``convert(value, like)`` adapts a value to the template leaf.
    Leaves with no entry keep the template's value.
    """
    new = []
    for slot, leaf in _pairs(template, num_params):
        candidates = range(num_params) if slot.index is None else [slot.index]
        value = next((entries[i][slot.name] for i in candidates if slot.name in entries[i]), None)
        new.append(leaf if value is None else convert(value, leaf))
    spec = optree.tree_structure(template)
    return optree.tree_unflatten(spec, new)
