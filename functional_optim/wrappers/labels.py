"""Resolving masks and labels against a params tree (used by ``masked`` and ``partition``).

A *mask* chooses leaves (True: selected) and *labels* sort leaves into named groups. Both
are resolved here into one Python value per leaf of the params tree, in optree's leaf
order with ``None`` counted as a leaf (``none_is_leaf=True``), so that a leaf whose
param or update is ``None`` keeps its position.

Accepted specifications:

* **a tree** with the params' structure or a **prefix** of it: ``{"encoder": False,
  "decoder": True}`` gives every leaf under ``"encoder"`` the value False. Mask leaves must
  be Python bools (the mask is static: it decides which leaves get state at all).
* **a callable** ``f(params) -> tree`` as above.
* for masks, **glob strings**: ``"*.bias"`` or ``["*.bias", "*norm*"]``, matched with
  :func:`fnmatch.fnmatchcase` against the leaf names of :func:`leaf_names` (True where any
  pattern matches); see :func:`mask_by_name`.
* for labels, **name rules** built by :func:`label_by_name`: ``(glob, label)`` pairs, the
  first matching rule wins, else a default label.

A glob that matches no leaf name at all is an error by default: a typo such as
``"*.bais"`` would otherwise silently do nothing. Pass ``allow_unmatched=True`` to
:func:`mask_by_name` / :func:`label_by_name` when that is intended (a generic rule list
applied to models that may lack e.g. norm layers).

Only :func:`leaf_names` computes names, so a caller that knows better names (the
torch.optim adapter, which holds params as a plain list) has one place to supply them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import optree
import torch

PyTree = Any

__all__ = ["leaf_names", "mask_by_name", "label_by_name", "PerLeafSpec", "resolve_mask", "resolve_labels"]


# ---------------------------------------------------------------------------------
# Leaf names


def _entry_name(entry: Any) -> str:
    # NamedTuple / struct sequence / dataclass entries carry the field name; mappings the
    # key; sequences the index
    for attr in ("field", "name"):
        name = getattr(entry, attr, None)
        if isinstance(name, str):
            return name
    return str(entry.entry)


def leaf_names(tree: PyTree) -> list[str]:
    """The name of every leaf of ``tree``: its key path joined by ``"."``.

    Dict keys, sequence indices and NamedTuple/dataclass field names are the path parts,
    so ``{"fc": {"bias": t}}`` gives ``"fc.bias"``, ``dict(model.named_parameters())``
    gives torch's names (``"fc.bias"``), a list gives ``"0"``, ``"1"``, ... A bare tensor
    (the tree is one leaf) is named ``""``. ``None`` counts as a leaf (it keeps its name),
    and the order is optree's leaf order (dict keys sorted).

    This is the one function that names leaves: masks and labels by glob go through it.

    Args:
      tree: a pytree (params, updates or anything with their structure).

    Example:
      >>> import torch
      >>> from functional_optim.wrappers.labels import leaf_names
      >>> leaf_names({"fc": {"weight": torch.ones(2), "bias": None}, "head": [torch.ones(1)]})
      ['fc.bias', 'fc.weight', 'head.0']
    """
    return list(_structure(tree)[0])


_STRUCTURE_CACHE: dict = {}  # PyTreeSpec -> (names, paths): a memo of a pure function


def _structure(tree: PyTree) -> tuple[tuple[str, ...], tuple[tuple, ...]]:
    """``(names, paths)`` of the leaves of ``tree`` (None counted as a leaf); a path is a
    tuple of ``(kind, key)`` steps, kind ``"map"`` (dict key), ``"seq"`` (index) or ``"attr"``."""
    spec = optree.tree_structure(tree, none_is_leaf=True)
    if torch.compiler.is_compiling():  # traced once per compiled structure
        return _structure_of(spec)
    out = _STRUCTURE_CACHE.get(spec)  # depends on the structure only
    if out is None:
        if len(_STRUCTURE_CACHE) >= 64:
            _STRUCTURE_CACHE.clear()
        out = _STRUCTURE_CACHE[spec] = _structure_of(spec)
    return out


def _entry_key(entry: Any) -> tuple[str, Any]:
    if isinstance(entry, optree.MappingEntry):
        return ("map", entry.entry)
    if isinstance(entry, optree.SequenceEntry):  # lists, tuples, NamedTuples
        return ("seq", entry.entry)
    return ("attr", _entry_name(entry))


def _structure_of(spec: optree.PyTreeSpec) -> tuple[tuple[str, ...], tuple[tuple, ...]]:
    accessors = spec.accessors()
    names = tuple(".".join(_entry_name(e) for e in accessor) for accessor in accessors)
    paths = tuple(tuple(_entry_key(e) for e in accessor) for accessor in accessors)
    return names, paths


# Name matching is pure Python on strings; under torch.compile it is run at trace time
# (its inputs are constants derived from the tree structure and the patterns, which Dynamo
# guards on), since Dynamo cannot trace ``re``.
_MATCH_CACHE: dict = {}  # (names, patterns) -> _match's result: a memo of a pure function


@torch.compiler.assume_constant_result
def _match(names: tuple[str, ...], patterns: tuple[str, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(first, unmatched)``: for each name the index of the first matching pattern (-1:
    none), and the indices of the patterns that match no name."""
    key = (names, patterns)
    out = _MATCH_CACHE.get(key)
    if out is None:
        matrix = [[fnmatch.fnmatchcase(n, p) for n in names] for p in patterns]
        first = tuple(next((i for i, row in enumerate(matrix) if row[j]), -1) for j in range(len(names)))
        unmatched = tuple(i for i, row in enumerate(matrix) if not any(row))
        if len(_MATCH_CACHE) >= 256:
            _MATCH_CACHE.clear()
        out = _MATCH_CACHE[key] = (first, unmatched)
    return out


def _names_preview(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names)} leaves)" if len(names) > limit else "")


def _check_patterns(argname: str, patterns: Any) -> tuple[str, ...]:
    if isinstance(patterns, str):
        return (patterns,)
    if isinstance(patterns, (list, tuple)) and all(isinstance(p, str) for p in patterns):
        return tuple(patterns)
    raise TypeError(f"{argname} must be a glob string or a list/tuple of glob strings, "
                    f"got {patterns!r}")


def _first_matches(argname: str, patterns: tuple[str, ...], names: list[str], allow_unmatched: bool,
                   what: Callable[[int], str]) -> tuple[int, ...]:
    """For each name the index of the first pattern matching it (-1: none); ValueError
    for a pattern matching no name unless ``allow_unmatched``."""
    first, unmatched = _match(tuple(names), patterns)
    if unmatched and not allow_unmatched:
        raise ValueError(
            f"{argname}: {what(unmatched[0])} matched no leaf name; the names are "
            f"{_names_preview(names)}. Fix the pattern, or pass allow_unmatched=True "
            "(mask_by_name / label_by_name) if matching nothing is intended")
    return first


# ---------------------------------------------------------------------------------
# Public helpers building callables


class PerLeafSpec:
    """A mask/labels callable that computes one value per leaf (in :func:`leaf_names`
    order, None counted as a leaf). Calling it returns the values as a tree with the
    structure of its argument; ``masked``/``partition`` use :meth:`per_leaf` directly,
    which also avoids rebuilding a tree of strings under ``torch.compile`` (Dynamo cannot
    unflatten a tree of constants)."""

    def __init__(self, per_leaf: Callable[[PyTree], list], description: str):
        self.per_leaf = per_leaf
        self._description = description

    def __call__(self, tree: PyTree) -> PyTree:
        return optree.tree_unflatten(optree.tree_structure(tree, none_is_leaf=True), self.per_leaf(tree))

    def __repr__(self) -> str:
        return self._description


def mask_by_name(patterns: str | Sequence[str], *, allow_unmatched: bool = False) -> PerLeafSpec:
    """A mask callable: True at leaves whose name (:func:`leaf_names`) matches a glob.

    Patterns are matched with :func:`fnmatch.fnmatchcase` (``*`` also matches dots, so
    ``"*.bias"`` matches ``"fc.bias"`` and ``"enc.layers.0.bias"``, but not a top-level
    leaf named ``"bias"``). ``masked(tx, "*.bias")`` is ``masked(tx, mask_by_name("*.bias"))``.

    Args:
      patterns: a glob string or a list/tuple of glob strings (True where any matches).
      allow_unmatched: if False (default), a pattern that matches no leaf name raises
        ValueError when the mask is resolved (catches typos such as ``"*.bais"``).

    Example:
      >>> import torch
      >>> from functional_optim.wrappers.labels import mask_by_name
      >>> mask_by_name("*.bias")({"fc": {"weight": torch.ones(2), "bias": torch.ones(1)}})
      {'fc': {'weight': False, 'bias': True}}
    """
    pats = _check_patterns("patterns", patterns)
    if not isinstance(allow_unmatched, bool):
        raise TypeError(f"allow_unmatched must be a bool, got {type(allow_unmatched).__name__}")

    def per_leaf(tree: PyTree) -> list[bool]:
        names = leaf_names(tree)
        first = _first_matches("patterns", pats, names, allow_unmatched, lambda i: f"pattern {pats[i]!r}")
        return [i >= 0 for i in first]

    return PerLeafSpec(per_leaf, f"mask_by_name({list(pats)!r}, allow_unmatched={allow_unmatched})")


def label_by_name(rules: Mapping[str, Hashable] | Sequence[tuple[str, Hashable]],
                  default: Hashable = None, *, allow_unmatched: bool = False) -> PerLeafSpec:
    """A labels callable for ``partition``: each leaf gets the label of the first rule whose
    glob matches its name (:func:`leaf_names`), else ``default``.

    Rules are ``(glob, label)`` pairs in priority order, or a dict ``{glob: label}`` (its
    insertion order is the priority). Globs use :func:`fnmatch.fnmatchcase`. ``partition``
    itself does not take a dict of globs directly: a dict there is a labels *tree* (its
    keys are param names, not patterns).

    Args:
      rules: ``[(glob, label), ...]`` or ``{glob: label}``; labels are hashable, not None.
      default: the label of leaves no rule matches. Default None: every leaf must match a
        rule (ValueError naming the first leaf that does not).
      allow_unmatched: if False (default), a rule whose glob matches no leaf name at all
        raises ValueError (catches typos such as ``"*.bais"``); set True for generic rule
        lists applied to models that may lack some kinds of params.

    Example:
      >>> import torch
      >>> from functional_optim.wrappers.labels import label_by_name
      >>> labels = label_by_name([("*.bias", "no_decay"), ("*norm*", "no_decay")], default="decay")
      >>> labels({"fc.weight": torch.ones(2, 2), "fc.bias": torch.ones(2), "norm.weight": torch.ones(2)})
      {'fc.weight': 'decay', 'fc.bias': 'no_decay', 'norm.weight': 'no_decay'}
    """
    if isinstance(rules, Mapping):
        pairs = list(rules.items())
    elif isinstance(rules, (list, tuple)):
        pairs = list(rules)
    else:
        raise TypeError(f"rules must be a list of (glob, label) pairs or a dict {{glob: label}}, "
                        f"got {type(rules).__name__}")
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)):
            raise TypeError(f"rules[{i}] must be a (glob string, label) pair, got {pair!r}")
        if pair[1] is None or not isinstance(pair[1], Hashable):
            raise TypeError(f"rules[{i}] label must be hashable and not None, got {pair[1]!r}")
    if not isinstance(default, Hashable):
        raise TypeError(f"default must be a hashable label, got {default!r}")
    if not isinstance(allow_unmatched, bool):
        raise TypeError(f"allow_unmatched must be a bool, got {type(allow_unmatched).__name__}")
    pats = tuple(p for p, _ in pairs)
    labels = [label for _, label in pairs]

    def per_leaf(tree: PyTree) -> list:
        leaves = optree.tree_leaves(tree, none_is_leaf=True)
        names = leaf_names(tree)
        first = _first_matches("rules", pats, names, allow_unmatched,
                               lambda i: f"rules[{i}] ({pats[i]!r}, {labels[i]!r})")
        values = [default if i < 0 else labels[i] for i in first]
        if default is None:
            for label, leaf, name in zip(values, leaves, names):
                if label is None and leaf is not None:
                    raise ValueError(f"rules: leaf {name!r} matches no rule and no default label "
                                     "was given (pass default=...)")
        return values

    return PerLeafSpec(per_leaf, f"label_by_name({pairs!r}, default={default!r}, "
                                 f"allow_unmatched={allow_unmatched})")


# ---------------------------------------------------------------------------------
# Resolution (used by masked / partition)


def _prefix_items(node: Any, path: tuple, out: list) -> list[tuple[tuple, Any]]:
    """``(path, value)`` for every leaf of a mask/labels tree, paths as in :func:`_structure`.

    Plain Python over dicts, lists and tuples (optree cannot flatten a tree of constants
    under torch.compile); other pytree node types go through optree."""
    if isinstance(node, dict):
        for key in node:
            _prefix_items(node[key], path + (("map", key),), out)
    elif isinstance(node, (list, tuple)):
        for i, child in enumerate(node):
            _prefix_items(child, path + (("seq", i),), out)
    elif node is None or isinstance(node, (bool, int, float, str, torch.Tensor)) \
            or optree.tree_is_leaf(node, none_is_leaf=True):
        out.append((path, node))
    else:
        leaves, spec = optree.tree_flatten(node, none_is_leaf=True)
        for accessor, leaf in zip(spec.accessors(), leaves):
            out.append((path + tuple(_entry_key(e) for e in accessor), leaf))
    return out


_COVER_CACHE: dict = {}  # (prefix paths, leaf paths) -> _cover's result: a memo


@torch.compiler.assume_constant_result
def _cover(prefix_paths: tuple[tuple, ...], leaf_paths: tuple[tuple, ...]) -> tuple[tuple[int, ...], int, int]:
    """``(index, uncovered, unused)``: for each leaf the index of the prefix path above it;
    the first leaf no prefix path covers and the first prefix path covering no leaf (-1: none)."""
    key = (prefix_paths, leaf_paths)
    out = _COVER_CACHE.get(key)
    if out is None:
        where = {p: i for i, p in enumerate(prefix_paths)}
        used = [False] * len(prefix_paths)
        index: list[int] = []
        uncovered = -1
        for j, path in enumerate(leaf_paths):
            i = next((where[path[:k]] for k in range(len(path) + 1) if path[:k] in where), -1)
            if i < 0:
                uncovered = j
                break
            used[i] = True
            index.append(i)
        # a single-leaf prefix (e.g. True) applies to any tree, even one without leaves
        unused = -1 if prefix_paths == ((),) else next((i for i, u in enumerate(used) if not u), -1)
        out = (tuple(index), uncovered, unused)
        if len(_COVER_CACHE) >= 256:
            _COVER_CACHE.clear()
        _COVER_CACHE[key] = out
    return out


def _path_name(path: tuple) -> str:
    return ".".join(str(key) for _, key in path)


def _broadcast(argname: str, prefix: PyTree, tree: PyTree) -> list:
    """One value of ``prefix`` per leaf of ``tree`` (``prefix`` a prefix of its structure)."""
    items = _prefix_items(prefix, (), [])
    names, leaf_paths = _structure(tree)
    index, uncovered, unused = _cover(tuple(p for p, _ in items), leaf_paths)
    if uncovered >= 0 or unused >= 0:
        what = (f"params leaf {names[uncovered]!r} has no entry in {argname}" if uncovered >= 0 else
                f"{argname} has an entry {_path_name(items[unused][0])!r} that matches no params leaf")
        raise ValueError(
            f"{argname} does not match the params: {what}. It must have the structure of the "
            f"params or of a prefix of it (e.g. {{'encoder': False, 'decoder': True}}); the params "
            f"leaves are {_names_preview(list(names))}")
    return [items[i][1] for i in index]


def _is_glob_list(spec: Any) -> bool:
    # an empty list, or a plain list/tuple with a string in it (a bool tree has no strings)
    return type(spec) in (list, tuple) and (not spec or any(isinstance(p, str) for p in spec))


def resolve_mask(mask: Any, tree: PyTree, argname: str = "mask") -> list[bool]:
    """The mask as one bool per leaf of ``tree`` (None counted as a leaf).

    ``mask`` is a bool tree (or prefix), a callable ``f(tree)`` returning one, a glob
    string, or a list/tuple of glob strings (an empty list selects nothing). At leaves
    where ``tree`` is None the mask may be None (read as False). Raises ValueError when the
    structure does not match or a glob matches nothing, TypeError for a non-bool leaf.

    Example:
      >>> import torch
      >>> from functional_optim.wrappers.labels import resolve_mask
      >>> resolve_mask({"enc": False, "dec": True}, {"enc": [torch.ones(1)] * 2, "dec": torch.ones(1)})
      [True, False, False]
    """
    if isinstance(mask, PerLeafSpec):
        values = mask.per_leaf(tree)
    else:
        if callable(mask):
            mask = mask(tree)
            if callable(mask):
                raise TypeError(f"{argname}: a callable mask must return a tree of bools, got {mask!r}")
        if isinstance(mask, str) or _is_glob_list(mask):
            pats = _check_patterns(argname, mask)
            names = leaf_names(tree)
            first = _first_matches(argname, pats, names, False, lambda i: f"pattern {pats[i]!r}")
            return [i >= 0 for i in first]
        values = _broadcast(argname, mask, tree)
    leaves = optree.tree_leaves(tree, none_is_leaf=True)
    out = []
    for j, (value, leaf) in enumerate(zip(values, leaves)):
        if value is None and leaf is None:
            out.append(False)
        elif isinstance(value, bool):
            out.append(value)
        else:
            hint = (" (a mask is static: use Python bools, not tensors)" if isinstance(value, torch.Tensor)
                    else " (to select by name give a glob string or a list of glob strings)"
                    if isinstance(value, str) else "")
            raise TypeError(f"{argname} leaves must be bools, got {value!r} at leaf "
                            f"{leaf_names(tree)[j]!r}{hint}")
    return out


def _contains(known: list, value: Any) -> bool:
    try:
        return value in known
    except TypeError:
        return False


def resolve_labels(param_labels: Any, tree: PyTree, known: Sequence[Hashable],
                   argname: str = "param_labels") -> list[Hashable]:
    """The labels as one value per leaf of ``tree`` (None counted as a leaf).

    ``param_labels`` is a labels tree (or prefix) or a callable ``f(tree)`` returning one
    (e.g. :func:`label_by_name`). Every leaf whose param is not None must get a label in
    ``known`` (ValueError naming the leaf and the label otherwise); None params may have
    label None.

    Example:
      >>> import torch
      >>> from functional_optim.wrappers.labels import resolve_labels
      >>> resolve_labels(("g", "d"), (torch.ones(1), [torch.ones(1)] * 2), known=["g", "d"])
      ['g', 'd', 'd']
    """
    if isinstance(param_labels, PerLeafSpec):
        values = param_labels.per_leaf(tree)
    else:
        if callable(param_labels):
            param_labels = param_labels(tree)
            if callable(param_labels):
                raise TypeError(f"{argname}: a callable must return a tree of labels, got {param_labels!r}")
        values = _broadcast(argname, param_labels, tree)
    leaves = optree.tree_leaves(tree, none_is_leaf=True)
    known_list = list(known)
    for j, (value, leaf) in enumerate(zip(values, leaves)):
        if leaf is None and value is None:
            continue
        if isinstance(value, torch.Tensor) or not _contains(known_list, value):
            raise ValueError(
                f"{argname}: leaf {leaf_names(tree)[j]!r} has label {value!r}, which is not a key "
                f"of transforms {known_list!r}; every leaf needs a label that has a transform")
    return values
