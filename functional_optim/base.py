"""Base types: the (init, update) pair and the smallest transforms."""

from __future__ import annotations

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


_ELEMENTWISE = "_functional_optim_elementwise"


def mark_elementwise(tx: GradientTransformation) -> GradientTransformation:
    """Declare that ``tx`` treats every element independently (no per-leaf structure).

    Such a transform gives the same result on params packed into one flat tensor as on
    the separate leaves (while every leaf has an update), which lets the torch.optim
    adapter run it over flat buffers. Returns ``tx``.

    Example:
      >>> import functional_optim as fo
      >>> fo.is_elementwise(fo.mark_elementwise(fo.identity()))
      True
    """
    setattr(tx.update, _ELEMENTWISE, True)
    return tx


def is_elementwise(tx: GradientTransformation) -> bool:
    """Whether ``tx`` was declared elementwise with :func:`mark_elementwise`."""
    return bool(getattr(tx.update, _ELEMENTWISE, False))
