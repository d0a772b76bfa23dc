"""Pytree utilities on optree (exposed as ``functional_optim.tree``).

``None`` leaves mean "no gradient here": maps skip them and keep them as ``None``.
Arithmetic goes through the kernel layer, so it is multi-tensor where that pays off.

Flattening is written for ``torch.compile`` too. Dynamo replaces optree's C++ functions
by Python polyfills it traces node by node (``optree.tree_leaves`` of an Adam state: about
200 ms of tracing), except ``optree.tree_map``, which it maps natively (about 1 ms). So
while compiling, leaves are collected with ``tree_map``; plain lists of tensors (what the
adapter passes) are taken as they are. Dynamo's ``tree_map`` visits dicts in insertion
order where optree sorts their keys: trees holding dicts still go through optree, so the
results are always optree's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import optree
import torch

from . import kernels as k

PyTree = Any
_MISSING = object()

__all__ = [
    "Selection", "select", "map", "leaves", "add", "sub", "scale", "add_scale", "vdot",
    "norm", "global_norm", "zeros_like", "ones_like", "full_like", "cast", "get",
    "get_all_with_path", "set", "describe", "where", "all_finite", "batch_dims",
]


# ---------------------------------------------------------------------------------
# Aligned leaves: how transforms see updates, state and params


def describe(spec: optree.PyTreeSpec, limit: int = 160) -> str:
    """A short printable form of a tree structure for error messages."""
    text = str(spec)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _flatten(tree: PyTree) -> tuple[list, optree.PyTreeSpec]:
    return optree.tree_flatten(tree, none_is_leaf=True)


def _is_flat_sequence(tree: Any) -> bool:
    # a plain list or tuple (not a subclass: NamedTuples are optree nodes of their own)
    # whose items are tensors or None: optree's leaves are then the items themselves.
    # A loop, not all(<genexpr>): cheaper for dynamo to trace
    if type(tree) is not list and type(tree) is not tuple:
        return False
    for x in tree:
        if x is not None and not isinstance(x, torch.Tensor):
            return False
    return True


def _is_dict(node: Any) -> bool:
    return isinstance(node, dict)


def _aligned_leaves(updates: PyTree, others: list[PyTree]) -> list[tuple] | None:
    """Rows ``(leaf of updates, aligned leaf of each other tree)`` in optree's order
    (None a leaf), collected by ``optree.tree_map`` (cheap to trace); None when optree's
    flattening must decide: a dict (see the module docstring), structures that differ, or
    another tree holding something other than a tensor or None where ``updates`` has a
    leaf (a subtree: optree's prefix rule)."""
    rows: list[tuple] = []

    def collect(*xs: Any) -> None:
        rows.append(xs)

    try:
        optree.tree_map(collect, updates, *others, none_is_leaf=True, is_leaf=_is_dict)
    except (ValueError, TypeError):
        return None
    for row in rows:
        if isinstance(row[0], dict):
            return None
        for x in row[1:]:
            if x is not None and not isinstance(x, torch.Tensor):
                return None
    return rows


class _SequenceSpec:
    """The structure of a flat list or tuple of ``n`` leaves."""

    __slots__ = ("kind", "n")

    def __init__(self, kind: type, n: int):
        self.kind, self.n = kind, n

    def unflatten(self, leaves: list) -> PyTree:
        return self.kind(leaves)

    def __str__(self) -> str:  # as optree prints it
        return str(optree.tree_structure(self.kind([None] * self.n), none_is_leaf=True))


class _TreeSpec:
    """The structure of ``tree`` (None a leaf), kept as the tree itself: unflattening maps
    over it with ``optree.tree_map``, which dynamo traces natively (used while compiling,
    for trees without dicts: the order of the leaves is then optree's)."""

    __slots__ = ("tree",)

    def __init__(self, tree: PyTree):
        self.tree = tree

    def unflatten(self, leaves: list) -> PyTree:
        it = iter(leaves)
        return optree.tree_map(lambda _: next(it), self.tree, none_is_leaf=True)

    def __str__(self) -> str:
        return str(optree.tree_structure(self.tree, none_is_leaf=True))


class _OptreeSpec:
    """An optree spec with the ``unflatten`` method of the other two."""

    __slots__ = ("spec",)

    def __init__(self, spec: optree.PyTreeSpec):
        self.spec = spec

    def unflatten(self, leaves: list) -> PyTree:
        return optree.tree_unflatten(self.spec, leaves)

    def __str__(self) -> str:
        return str(self.spec)


def _flatten_all(updates: PyTree, trees: dict[str, PyTree]) -> tuple[_OptreeSpec, list[list]]:
    """The updates' optree spec and the leaves of every tree (updates first); raises
    ValueError naming the first tree whose structure differs."""
    leaves, spec = _flatten(updates)
    columns = [leaves]
    for name, tree in trees.items():
        other, other_spec = _flatten(tree)
        if other_spec != spec:
            what = {"params": "params", "mask": "mask", "b": "the second tree"}.get(name, f"state ({name!r})")
            raise ValueError(
                f"{what} does not match the structure of the updates: expected "
                f"{describe(spec)}, got {describe(other_spec)}; was the state made by "
                "init() on other params?")
        columns.append(other)
    return _OptreeSpec(spec), columns


class Selection:
    """The present (non-None) leaves of an updates tree, with aligned leaves of other trees.

    Build it with :func:`select`. ``sel.updates`` is the list of present update leaves;
    ``sel[name]`` the aligned leaves of the tree given under ``name``;
    ``sel.rebuild(new_leaves, name)`` puts new leaves back at the present positions of
    that tree (``name=None``: the updates tree), keeping every other leaf as it was.
    """

    def __init__(self, updates: PyTree, trees: dict[str, PyTree]):
        names = list(trees)
        plain = _is_flat_sequence(updates)
        for tree in trees.values():
            plain = plain and _is_flat_sequence(tree)
        columns: list[list] | None = None
        if plain:  # the adapter's lists of tensors: the leaves are the items
            spec: Any = _SequenceSpec(type(updates), len(updates))
            columns = [list(updates)]
            for name in names:
                if type(trees[name]) is not spec.kind or len(trees[name]) != spec.n:
                    columns = None  # reported by optree's flattening below
                    break
                columns.append(list(trees[name]))
        elif torch.compiler.is_compiling():  # eagerly, optree's C++ flattening is the fastest
            spec = _TreeSpec(updates)
            rows = _aligned_leaves(updates, [trees[n] for n in names])
            if rows is not None:
                columns = [[row[j] for row in rows] for j in range(len(names) + 1)]
        if columns is None:  # optree decides (and names a tree that differs)
            spec, columns = _flatten_all(updates, trees)
        self.spec = spec
        leaves = columns[0]
        self.index = [i for i, leaf in enumerate(leaves) if leaf is not None]
        self._leaves: dict[str | None, list] = {None: leaves}
        for name, column in zip(names, columns[1:]):
            self._leaves[name] = column
        self.updates = [leaves[i] for i in self.index]

    def __getitem__(self, name: str) -> list:
        full = self._leaves[name]
        return [full[i] for i in self.index]

    def check_like_updates(self, *names: str, dtypes: dict[str, torch.dtype | None] | None = None) -> None:
        """Raise ValueError unless every present leaf of the state trees ``names`` has the
        shape of its update leaf, and the dtype ``dtypes[name]`` where one is declared (None:
        not checked, e.g. "the param's dtype", which a chain may have widened).

        A state made by ``init`` for other params of the same structure would otherwise be
        broadcast silently (a ``(1,)`` moment against a ``(3,)`` gradient) or fail deep
        in a kernel. Shapes are static under ``torch.compile`` (checked once, while
        tracing) and per example under ``vmap`` (what a state for one example must match).

        Example:
          >>> import torch, functional_optim as fo
          >>> sel = fo.tree.select({"w": torch.ones(3)}, mu={"w": torch.zeros(2)})
          >>> sel.check_like_updates("mu")
          Traceback (most recent call last):
          ...
          ValueError: state field 'mu' at leaf ['w'] has shape (2,), but the update there has shape (3,): was the state made by init() on other params?
        """
        for name in names:
            dtype = (dtypes or {}).get(name)
            for j, (u, x) in enumerate(zip(self.updates, self[name])):
                if not isinstance(x, torch.Tensor) or not isinstance(u, torch.Tensor):
                    continue
                if x.shape != u.shape:
                    raise ValueError(
                        f"state field {name!r} at leaf {self._path(j)} has shape {tuple(x.shape)}, but the "
                        f"update there has shape {tuple(u.shape)}: was the state made by init() on other params?")
                if dtype is not None and x.dtype != dtype:
                    raise ValueError(
                        f"state field {name!r} at leaf {self._path(j)} has dtype {x.dtype}, but the transform "
                        f"declares {dtype}: was the state made by init() of another transform?")

    def _path(self, j: int) -> str:
        # the printable path of the j-th present leaf (for error messages only)
        tree = self.spec.unflatten([None] * len(self._leaves[None]))
        paths = optree.tree_paths(tree, none_is_leaf=True)
        return "".join(f"[{key!r}]" for key in paths[self.index[j]]) or "(the root)"

    def __len__(self) -> int:
        return len(self.index)

    def rebuild(self, new: Sequence[Any], name: str | None = None) -> PyTree:
        full = list(self._leaves[name])
        if len(self.index) == len(full) == len(new):  # no None leaf: the new leaves in order
            full = list(new)
        else:
            for i, leaf in zip(self.index, new):
                full[i] = leaf
        return self.spec.unflatten(full)


def select(updates: PyTree, **trees: PyTree) -> Selection:
    """Align the present leaves of ``updates`` with the same leaves of ``trees``.

    Every tree must have the structure of ``updates`` (``None`` counting as a leaf), else
    ValueError names it.

    Example:
      >>> import torch, functional_optim as fo
      >>> sel = fo.tree.select({"a": torch.ones(1), "b": None},
      ...                      mu={"a": torch.zeros(1), "b": torch.zeros(1)})
      >>> len(sel), sel["mu"][0]
      (1, tensor([0.]))
    """
    return Selection(updates, trees)


# ---------------------------------------------------------------------------------
# Maps and arithmetic


def map(f: Callable[..., Any], tree: PyTree, *rest: PyTree) -> PyTree:
    """``f`` over the non-None leaves of ``tree`` (and aligned leaves of ``rest``); None stays None.

    Example:
      >>> import torch, functional_optim as fo
      >>> fo.tree.map(lambda x: x * 2, {"a": torch.ones(1), "b": None})
      {'a': tensor([2.]), 'b': None}
    """
    return optree.tree_map(lambda x, *r: None if x is None else f(x, *r), tree, *rest, none_is_leaf=True)


def leaves(tree: PyTree) -> list[torch.Tensor]:
    """The non-None leaves of ``tree`` in order (``optree.tree_leaves``; while compiling,
    collected with ``optree.tree_map``, which dynamo traces cheaply: see the module docstring).

    Example:
      >>> import torch, functional_optim as fo
      >>> fo.tree.leaves((fo.ScaleByAdamState(torch.ones(()), [torch.zeros(2)], [None], None), []))
      [tensor(1.), tensor([0., 0.])]
    """
    if not torch.compiler.is_compiling():
        return optree.tree_leaves(tree)
    out: list = []
    optree.tree_map(out.append, tree, is_leaf=_is_dict)
    for x in out:
        if isinstance(x, dict):  # dynamo's tree_map would not sort its keys as optree does
            return optree.tree_leaves(tree)
    return out


def _binary(kernel: Callable, a: PyTree, b: PyTree, *args: Any) -> PyTree:
    sel = select(a, b=b)
    return sel.rebuild(kernel(sel.updates, sel["b"], *args))


def add(a: PyTree, b: PyTree) -> PyTree:
    """Leafwise ``a + b`` (None leaves of ``a`` stay None)."""
    return _binary(k.add, a, b)


def sub(a: PyTree, b: PyTree) -> PyTree:
    """Leafwise ``a - b``."""
    return _binary(k.sub, a, b)


def add_scale(a: PyTree, scalar: Any, b: PyTree) -> PyTree:
    """Leafwise ``a + scalar * b``."""
    return _binary(k.add, a, b, scalar)


def scale(tree: PyTree, scalar: Any) -> PyTree:
    """Leafwise ``scalar * x`` (``scalar`` a number or 0-d tensor).

    Example:
      >>> import torch, functional_optim as fo
      >>> fo.tree.scale({"a": torch.ones(2)}, 3.0)
      {'a': tensor([3., 3.])}
    """
    sel = select(tree)
    return sel.rebuild(k.mul(sel.updates, scalar))


def vdot(a: PyTree, b: PyTree) -> torch.Tensor:
    """``sum <a_i, b_i>`` over all leaves (real part for complex), a 0-d tensor."""
    sel = select(a, b=b)
    out = k.vdot(sel.updates, sel["b"])
    if out is None:
        raise ValueError("vdot of trees with no tensor leaves")
    return out


def norm(tree: PyTree, ord: int | float | str = 2, squared: bool = False) -> torch.Tensor:
    """The norm of all leaves seen as one vector: ``ord`` 1, 2 or ``inf``.

    Args:
      tree: a tree of tensors.
      ord: 1, 2 (default) or ``float('inf')``/``'inf'``.
      squared: return the squared norm (only for ``ord=2``).

    Example:
      >>> import torch, functional_optim as fo
      >>> fo.tree.norm({"a": torch.tensor([3.0]), "b": torch.tensor([4.0])})
      tensor(5.)
    """
    xs = leaves(tree)
    if not xs:
        raise ValueError("norm of a tree with no tensor leaves")
    if ord == 2:
        out = k.global_norm(xs)
        return out.square() if squared else out
    if squared:
        raise ValueError(f"squared=True requires ord=2, got ord={ord!r}")
    if ord == 1:
        return sum(torch.linalg.vector_norm(k._real(x), 1) for x in xs)
    if ord in ("inf", float("inf")):
        return torch.stack([torch.linalg.vector_norm(k._real(x), float("inf")) for x in xs]).max()
    raise ValueError(f"ord must be 1, 2 or inf, got {ord!r}")


def all_finite(tree: PyTree) -> torch.Tensor:
    """A 0-d bool tensor: True when no leaf holds a NaN or an Inf (None leaves are
    skipped; True for a tree without tensors). No host sync.

    Example:
      >>> import torch, functional_optim as fo
      >>> fo.tree.all_finite({"a": torch.ones(2), "b": None})
      tensor(True)
    """
    return k.all_finite(leaves(tree))


def where(cond: torch.Tensor, new: PyTree, old: PyTree, *, name: str = "state") -> PyTree:
    """Leaf by leaf ``torch.where(cond, new, old)`` over two trees of the same structure.

    Where ``cond`` is False the result holds ``old``'s values bit for bit (a NaN or Inf in
    ``new`` does not leak). ``old`` may be a scalar (e.g. ``0.0``) used for every leaf.
    None leaves stay None; leaves that are not tensors must be equal in both trees.

    Args:
      cond: a 0-d bool tensor (no host sync: both trees are computed).
      new: the tree taken where ``cond`` is True.
      old: the tree (or scalar) kept where it is False.
      name: what the trees are, for error messages.

    Raises:
      ValueError: the structures differ (naming ``name``).
      TypeError: a non-tensor leaf differs between the trees.

    Example:
      >>> import torch, functional_optim as fo
      >>> fo.tree.where(torch.tensor(False), {"m": torch.tensor([float("nan")])}, {"m": torch.zeros(1)})
      {'m': tensor([0.])}
    """
    new_leaves, spec = optree.tree_flatten(new, none_is_leaf=True)
    if isinstance(old, (int, float)) and not isinstance(old, bool):
        old_leaves = [old if isinstance(n, torch.Tensor) else n for n in new_leaves]
    else:
        old_leaves, old_spec = optree.tree_flatten(old, none_is_leaf=True)
        if spec != old_spec:
            raise ValueError(f"the {name} changed structure during the update: {describe(old_spec)} "
                             f"became {describe(spec)}")
    tensors = [i for i, n in enumerate(new_leaves) if isinstance(n, torch.Tensor)]
    picked = k.where(cond, [new_leaves[i] for i in tensors], [old_leaves[i] for i in tensors])
    out = list(old_leaves)
    for i, t in zip(tensors, picked):
        out[i] = t
    for i, (n, o) in enumerate(zip(new_leaves, old_leaves)):
        if isinstance(n, torch.Tensor):
            continue
        if isinstance(o, torch.Tensor) or not (n is o or n == o):
            raise TypeError(f"the {name} has a leaf that is not a tensor and changed during the update "
                            f"({o!r} -> {n!r}); it cannot be selected without a host sync")
    return optree.tree_unflatten(spec, out)


def batch_dims(tree: PyTree, dim: int = 0) -> PyTree:
    """``torch.func.vmap`` dims for a batched tree: ``dim`` at each tensor, None elsewhere.

    torch's ``vmap`` takes a ``None`` in its inputs or outputs as a leaf and refuses to
    batch it, while states here hold None for leaves without a gradient and for unused
    fields (``ScaleByAdamState.nu_max`` without amsgrad). Pass this tree as ``in_dims`` /
    ``out_dims`` for params, gradients and states batched along ``dim``.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_adam()
      >>> params = {"w": torch.zeros(4, 3)}  # 4 problems of 3 weights
      >>> state = torch.func.vmap(tx.init, out_dims=fo.tree.batch_dims(tx.init({"w": torch.zeros(3)})))(params)
      >>> state.mu["w"].shape, state.nu_max
      (torch.Size([4, 3]), None)
    """
    return optree.tree_map(lambda x: dim if isinstance(x, torch.Tensor) else None, tree, none_is_leaf=True)


def global_norm(tree: PyTree) -> torch.Tensor:
    """The 2-norm of all leaves seen as one vector (optax's ``global_norm``)."""
    return norm(tree, 2)


def zeros_like(tree: PyTree, dtype: torch.dtype | None = None) -> PyTree:
    """Zeros shaped like each leaf (optionally in ``dtype``)."""
    return map(lambda x: torch.zeros_like(x, dtype=dtype), tree)


def ones_like(tree: PyTree, dtype: torch.dtype | None = None) -> PyTree:
    """Ones shaped like each leaf (optionally in ``dtype``)."""
    return map(lambda x: torch.ones_like(x, dtype=dtype), tree)


def full_like(tree: PyTree, fill_value: Any, dtype: torch.dtype | None = None) -> PyTree:
    """``fill_value`` shaped like each leaf (optionally in ``dtype``)."""
    return map(lambda x: torch.full_like(x, fill_value, dtype=dtype), tree)


def cast(tree: PyTree, dtype: torch.dtype | None) -> PyTree:
    """Each floating leaf in ``dtype`` (None: unchanged); integer leaves are kept."""
    if dtype is None:
        return tree
    return map(lambda x: x.to(dtype) if x.is_floating_point() or x.is_complex() else x, tree)


# ---------------------------------------------------------------------------------
# Path-based access into state trees (named chains, NamedTuple states, dicts)


def _children(node: Any) -> Iterator[tuple[str, Any]] | None:
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return iter(zip(node._fields, node))
    if isinstance(node, dict):
        return ((str(key), v) for key, v in node.items())
    if isinstance(node, (list, tuple)):
        return ((str(i), v) for i, v in enumerate(node))
    return None


def _walk(node: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    children = _children(node)
    if children is None:
        return
    for name, child in children:
        yield path + (name,), child
        yield from _walk(child, path + (name,))


def _matches(path: tuple[str, ...], key: str) -> bool:
    wanted = tuple(key.split("/"))
    return path[-len(wanted):] == wanted


def get_all_with_path(tree: PyTree, key: str) -> list[tuple[str, Any]]:
    """Every node whose path ends with ``key`` (names joined by '/'), as ``(path, node)``."""
    return [("/".join(p), v) for p, v in _walk(tree, ()) if _matches(p, key)]


def get(tree: PyTree, key: str, default: Any = _MISSING) -> Any:
    """The node of ``tree`` reached by ``key``: a field or dict key name, or a '/'-joined
    path suffix such as ``"clip/global_norm"`` or ``"1/count"``.

    Raises KeyError when nothing matches (unless ``default`` is given) or when several do.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.named_chain(("clip", fo.clip_by_global_norm(1.0)), ("sgd", fo.sgd(0.1)))
      >>> params = {"w": torch.ones(2)}
      >>> _, state = tx.update({"w": torch.tensor([3.0, 4.0])}, tx.init(params), params)
      >>> fo.tree.get(state, "global_norm")
      tensor(5.)
    """
    found = get_all_with_path(tree, key)
    if not found:
        if default is not _MISSING:
            return default
        raise KeyError(f"no node named {key!r} in the tree")
    if len(found) > 1:
        paths = ", ".join(p for p, _ in found)
        raise KeyError(f"{key!r} is ambiguous: it matches {paths}; give a longer path")
    return found[0][1]


def set(tree: PyTree, key: str, value: Any) -> PyTree:
    """A copy of ``tree`` with the single node matched by ``key`` (as in :func:`get`)
    replaced by ``value``; the input is not modified.

    Example:
      >>> import torch, functional_optim as fo
      >>> state = fo.ClipByGlobalNormState(global_norm=torch.tensor(0.0))
      >>> fo.tree.set(state, "global_norm", torch.tensor(2.0)).global_norm
      tensor(2.)
    """
    target = get_all_with_path(tree, key)
    if len(target) != 1:
        get(tree, key)  # raises the KeyError with the reason
    path = tuple(target[0][0].split("/"))
    return _replace(tree, path, value)


def _replace(node: Any, path: tuple[str, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return node._replace(**{head: _replace(getattr(node, head), rest, value)})
    if isinstance(node, dict):
        key = next(kk for kk in node if str(kk) == head)
        out = type(node)(node)
        out[key] = _replace(node[key], rest, value)
        return out
    items = list(node)
    items[int(head)] = _replace(items[int(head)], rest, value)
    return type(node)(items)
