"""Base types: the (init, update) pair and the smallest transforms."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, Union

import optree
import torch

PyTree = Any
Params = Updates = OptState = PyTree
Schedule = Callable[[Union[int, torch.Tensor]], Union[float, torch.Tensor]]
ScalarOrSchedule = Union[float, torch.Tensor, Schedule]


class TransformInitFn(Protocol):
    def __call__(self, params: Params) -> OptState: ...


class TransformUpdateFn(Protocol):
    def __call__(self, updates: Updates, state: OptState, params: Params | None = None,
                 **extra: Any) -> tuple[Updates, OptState]: ...


class GradientTransformation(NamedTuple):
    """A pure optimizer transform: ``init(params) -> state`` and
    ``update(updates, state, params=None, **extra) -> (updates, new_state)``.

    ``update`` ignores extra keyword arguments it does not know. The extra ``donate=True``
    lets it overwrite the incoming ``updates`` and its own ``state`` buffers (the caller
    must own them); without it nothing passed in is modified.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.GradientTransformation(lambda p: fo.EmptyState(),
      ...                                lambda u, s, p=None, **kw: (u, s))
      >>> tx.update({"w": torch.ones(2)}, tx.init({"w": torch.zeros(2)}))[0]["w"]
      tensor([1., 1.])
    """

    init: TransformInitFn
    update: TransformUpdateFn


class EmptyState(NamedTuple):
    """State of a stateless transform (no fields, no leaves)."""


def init_empty_state(params: Params) -> EmptyState:
    """The ``init`` of every stateless transform: an :class:`EmptyState`, whatever ``params``.

    Example:
      >>> import torch, functional_optim as fo
      >>> fo.base.init_empty_state({"w": torch.zeros(2)})
      EmptyState()
    """
    del params
    return EmptyState()


def identity() -> GradientTransformation:
    """A transform that returns the updates unchanged.

    Example:
      >>> import torch, functional_optim as fo
      >>> fo.identity().update(torch.ones(2), fo.EmptyState())[0]
      tensor([1., 1.])
    """


    def update_fn(updates, state, params=None, **extra):
        del params, extra
        return updates, state

    return mark_elementwise(GradientTransformation(init_empty_state, update_fn))


def stateless(f: Callable[[Updates, Params | None], Updates]) -> GradientTransformation:
    """A transform from a pure function ``f(updates, params) -> updates`` (no state).

    Args:
      f: called with the whole updates tree and the params tree (or None).

    Example:
      >>> import torch, functional_optim as fo
      >>> halve = fo.stateless(lambda u, p: fo.tree.scale(u, 0.5))
      >>> halve.update({"w": torch.ones(2)}, fo.EmptyState())[0]["w"]
      tensor([0.5000, 0.5000])
    """
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")


    def update_fn(updates, state, params=None, **extra):
        del extra
        return f(updates, params), state

    return GradientTransformation(init_empty_state, update_fn)


def set_to_zero() -> GradientTransformation:
    """A transform that replaces every update by zeros (freezes the params it sees).

    Example:
      >>> import torch, functional_optim as fo
      >>> fo.set_to_zero().update(torch.ones(2), fo.EmptyState())[0]
      tensor([0., 0.])
    """

    def update_fn(updates, state, params=None, **extra):
        del params, extra
        zeros = optree.tree_map(torch.zeros_like, updates)
        return zeros, state

    return mark_elementwise(GradientTransformation(init_empty_state, update_fn))


_NEEDS = "_functional_optim_needs"


class Needs(enum.IntEnum):
    """What a transform's math needs beyond elementwise operations, from least to most.

    Every transform declares one level with :func:`declare` (a combinator declares the
    most any of its parts needs; a transform that declares nothing counts as ``MATRIX``,
    the safe default). The torch.optim adapter reads it to choose how to run a group:
    with ``compile=True``, a transform needing at most ``PER_PARAM`` runs on **flat
    buffers** (the group's params packed per (device, dtype) into one tensor: one
    compiled graph whose size and compile time do not grow with the number of params);
    ``LEAVES`` and ``MATRIX`` transforms see one leaf per param.

    * ``ELEMENTWISE``: every entry is updated independently of the others (Adam, SGD,
      weight decay, schedules). The result on params packed into one flat tensor equals
      the result on the separate leaves.
    * ``GLOBAL``: also reductions over all entries of all leaves together (global norm
      clipping, all-finite checks). Exact on flat buffers: a sum over the buffers is a
      sum over the leaves (up to the order of additions).
    * ``PER_PARAM``: also reductions per leaf whose results every leaf uses the same way:
      per-tensor norms, RMS and means, trust ratios (LARS, LAMB), per-param clipping
      (:func:`~functional_optim.clip_by_block_rms`). On flat buffers they run as
      segmented reductions, one segment per param (:mod:`functional_optim.segments`).
      Such a transform must take its per-leaf reductions from the kernels
      (:func:`kernels.norms <functional_optim.kernels.norms>`, ``rms``, ``means`` and
      ``unit_norms`` over whole tensors) and combine the resulting per-leaf scalars with
      kernels, ``kernels.leafwise`` or elementwise torch ops: on a flat buffer a per-leaf
      0-d scalar becomes a ``(nblocks, 1)`` tensor that broadcasts against the
      buffer's ``(nblocks, B)`` view. It must not read a leaf's ``numel``, ``shape`` or
      ``dim`` (use ``kernels.rms`` rather than ``norm / sqrt(numel)``), nor use a scalar
      on the host, nor map zero updates, params and state to nonzero ones (padding).
    * ``LEAVES``: choices that tell leaves apart by their position or label: masks
      (:func:`~functional_optim.masked`, ``add_decayed_weights(mask=...)``), partitions
      and labels (:func:`~functional_optim.partition`, ``multi_transform``), noise keyed
      by leaf position (:func:`~functional_optim.add_noise`). The transform must see
      each param as its own leaf.
    * ``MATRIX``: a leaf's shape matters (per-row or per-unit norms as in
      :func:`~functional_optim.adaptive_grad_clip` and
      :func:`~functional_optim.centralize`, factored moments, orthogonalisation,
      reshapes). The default for a transform that declares nothing.

    This replaces the older yes/no :func:`is_elementwise` (still available:
    ``needs(tx) == ELEMENTWISE``).

    Example:
      >>> import functional_optim as fo
      >>> fo.needs(fo.chain(fo.clip_by_block_rms(1.0), fo.adam()))
      <Needs.PER_PARAM: 2>
      >>> fo.needs(fo.masked(fo.adam(), lambda p: [True] * len(p)))
      <Needs.LEAVES: 3>
    """

    ELEMENTWISE = 0
    GLOBAL = 1
    PER_PARAM = 2
    LEAVES = 3
    MATRIX = 4


def declare(tx: GradientTransformation, needs: Needs) -> GradientTransformation:
    """Declare what ``tx`` needs beyond elementwise math (see :class:`Needs`); returns ``tx``.

    Declare the least level that is true of the whole update: the adapter runs a
    ``PER_PARAM`` transform on flat buffers, where a leaf's shape and position are not
    available (see :class:`Needs` for the rules). A combinator declares the most any of
    its parts needs (:func:`needs_of_all`).

    Example:
      >>> import functional_optim as fo
      >>> fo.needs(fo.declare(fo.identity(), fo.Needs.GLOBAL))
      <Needs.GLOBAL: 1>
    """
    setattr(tx.update, _NEEDS, Needs(needs))
    return tx


def needs(tx: GradientTransformation) -> Needs:
    """What ``tx`` declared it needs (:class:`Needs.MATRIX` if it declared nothing).

    Example:
      >>> import functional_optim as fo
      >>> fo.needs(fo.adam()), fo.needs(fo.chain(fo.clip_by_global_norm(1.0), fo.adam()))
      (<Needs.ELEMENTWISE: 0>, <Needs.GLOBAL: 1>)
    """
    return getattr(tx.update, _NEEDS, Needs.MATRIX)


def needs_of_all(*transforms: GradientTransformation, at_least: Needs = Needs.ELEMENTWISE) -> Needs:
    """The most any of ``transforms`` needs, and at least ``at_least`` (for combinators)."""
    return max([at_least, *(needs(t) for t in transforms)])


def mark_elementwise(tx: GradientTransformation) -> GradientTransformation:
    """Declare that ``tx`` treats every element independently: ``declare(tx, Needs.ELEMENTWISE)``.

    Example:
      >>> import functional_optim as fo
      >>> fo.is_elementwise(fo.mark_elementwise(fo.identity()))
      True
    """
    return declare(tx, Needs.ELEMENTWISE)


def is_elementwise(tx: GradientTransformation) -> bool:
    """Whether ``tx`` declared :attr:`Needs.ELEMENTWISE` (the older form of
    ``needs(tx) == Needs.ELEMENTWISE``; :func:`needs` tells the other levels apart)."""
    return needs(tx) == Needs.ELEMENTWISE
