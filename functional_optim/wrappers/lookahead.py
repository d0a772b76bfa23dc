"""Lookahead (Zhang et al., 2019): k fast steps forward, one step back toward slow weights.

A torch-friendly form of ``optax.lookahead``: the params stay the ordinary params (the
fast weights), and the slow weights live in the state. There is no ``LookaheadParams``
pair, so the transform fits ``torch.optim`` and any training loop unchanged.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import optree
import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation, declare, needs
from ..combine import _check_transform
from ..hyperparams import check_range
from ..tree import PyTree, select
from ..tree import where as tree_where

__all__ = ["LookaheadState", "lookahead", "lookahead_slow_params"]

_SLOW_INITS = ("params", "first_sync")


class LookaheadState(NamedTuple):
    """State of :func:`lookahead`."""

    fast_state: Any  # the fast optimizer's state
    steps_since_sync: torch.Tensor  # 0-d int32: fast steps since the last sync, in [0, sync_period)
    slow: Any  # tree like params (param dtype): the slow weights (zeros until a leaf's are set)
    slow_set: Any  # tree of 0-d bool: whether the leaf's slow weights are set (see slow_init)


def lookahead(fast_optimizer: GradientTransformation, sync_period: int = 6,
              slow_step_size: float | torch.Tensor = 0.5, reset_state: bool = False, *,
              slow_init: Literal["params", "first_sync"] = "params") -> GradientTransformation:
    """Lookahead around ``fast_optimizer``: every ``sync_period`` steps the params move to
    ``slow + slow_step_size * (fast - slow)``, which becomes the new slow weights.

    With ``u`` the fast optimizer's update and ``p`` the params, each step returns ``u``,
    except every ``sync_period``-th step (counted per transform, whether or not a leaf
    had a gradient), which returns the update that moves the params to the synced value::

        fast = p + u                      # the fast weights after this step
        new  = slow + alpha * (fast - slow)  (torch.lerp)
        slow <- new;  update = new - p

    so ``p + update`` equals ``new`` up to one rounding (``p + (new - p)`` may differ from
    ``new`` by one ulp). The sync decision is a ``torch.where`` on the 0-d counter: no host
    sync, one compiled graph for sync and non-sync steps. A leaf whose update is None is
    neither stepped nor synced (as timm skips params without ``.grad``).

    Initial slow weights (``slow_init``):
      - ``"params"`` (default; the paper's and optax's rule): the params before the
        leaf's first update, i.e. the params given to ``init``.
      - ``"first_sync"`` (timm's ``Lookahead``): the slow buffer is created at a leaf's
        first sync as a copy of the fast weights, so the first sync is a no-op.
    The state keeps the slow weights as zeros until they are set (so ``init`` does not
    copy the params); read them with :func:`lookahead_slow_params`.

    Compared with ``optax.lookahead``: the params are not a ``LookaheadParams(fast, slow)``
    pair, ``update`` needs ``params`` (the fast weights), and the state has the extra
    fields ``slow`` and ``slow_set``. The returned updates must be applied unchanged
    (do not chain transforms after lookahead that alter them).

    Args:
      fast_optimizer: the inner optimizer (a GradientTransformation).
      sync_period: number of fast steps between syncs (timm's ``k``), an int >= 1. Default 6.
      slow_step_size: ``alpha`` in [0, 1], a number or 0-d tensor. Default 0.5.
      reset_state: reset the fast optimizer's state to ``fast_optimizer.init(params)`` at
        every sync (optax's option; the whole fast state is reset). Default False.
      slow_init: ``"params"`` or ``"first_sync"``, see above. Default ``"params"``.

    Example:
      >>> import torch, functional_optim as fo
      >>> from functional_optim.wrappers.lookahead import lookahead, lookahead_slow_params
      >>> tx = lookahead(fo.sgd(lr=1.0), sync_period=2, slow_step_size=0.5)
      >>> params = torch.zeros(1)
      >>> state = tx.init(params)
      >>> for _ in range(2):  # fast: 0 -> 1 -> 2, then sync: 0 + 0.5 * (2 - 0)
      ...     u, state = tx.update(-torch.ones(1), state, params)
      ...     params = fo.apply_updates(params, u)
      >>> params, lookahead_slow_params(state)
      (tensor([1.]), tensor([1.]))
    """
    _check_transform("fast_optimizer", fast_optimizer)
    if isinstance(sync_period, bool) or not isinstance(sync_period, int):
        raise TypeError(f"sync_period must be an int, got {type(sync_period).__name__}")
    if sync_period < 1:
        raise ValueError(f"Invalid sync_period: {sync_period} (expected sync_period >= 1)")
    check_range("slow_step_size", slow_step_size, 0.0, 1.0, high_inclusive=True)
    if not isinstance(reset_state, bool):
        raise TypeError(f"reset_state must be a bool, got {type(reset_state).__name__}")
    if slow_init not in _SLOW_INITS:
        raise ValueError(f"slow_init must be one of {_SLOW_INITS}, got {slow_init!r}")
    from_params = slow_init == "params"

    def init_fn(params):
        flags = optree.tree_map(lambda p: None if p is None else torch.zeros((), dtype=torch.bool, device=p.device),
                                params, none_is_leaf=True)
        return LookaheadState(
            fast_state=fast_optimizer.init(params),
            steps_since_sync=steps.zero_count(steps.first_device(params)),
            slow=optree.tree_map(lambda p: None if p is None else torch.zeros_like(p), params, none_is_leaf=True),
            slow_set=flags)

    def update_fn(updates, state, params=None, **extra):
        if params is None:
            raise ValueError("lookahead needs params (the fast weights) in update(updates, state, params)")
        sync = state.steps_since_sync == sync_period - 1  # 0-d bool: this step ends with a sync
        updates, fast_state = fast_optimizer.update(updates, state.fast_state, params, **extra)
        if reset_state:
            fast_state = tree_where(sync, fast_optimizer.init(params), fast_state, name="fast state")
        sel = select(updates, params=params, slow=state.slow, slow_set=state.slow_set)
        ps, us, ready = sel["params"], sel.updates, sel["slow_set"]
        fast = [(p + u).to(p.dtype) for p, u in zip(ps, us)]  # exactly what apply_updates gives
        base = k.where(ready, sel["slow"], ps if from_params else fast)
        target = k.lerp(base, fast, slow_step_size)
        # off-sync the slow weights are kept (set to p at a leaf's first update with "params")
        new_slow = k.where(sync, target, base if from_params else sel["slow"])
        moved = k.sub(target, ps, donate=True)  # target is a fresh intermediate
        out = k.where(sync, moved, us)
        new_set = [torch.ones_like(r) if from_params else r | sync for r in ready]
        new_state = LookaheadState(
            fast_state=fast_state,
            steps_since_sync=(state.steps_since_sync + 1) % sync_period,
            slow=sel.rebuild(new_slow, "slow"), slow_set=sel.rebuild(new_set, "slow_set"))
        return sel.rebuild(out), new_state

    tx = GradientTransformation(init_fn, update_fn)
    return declare(tx, needs(fast_optimizer))


def lookahead_slow_params(state: Any, params: PyTree | None = None) -> PyTree:
    """The slow weights held by the (single) :class:`LookaheadState` inside ``state``.

    Leaves whose slow weights are not yet set (before a leaf's first update, or before
    its first sync with ``slow_init="first_sync"``) are zeros in the state; given
    ``params``, those leaves are taken from ``params`` instead (``torch.where``, no host
    sync).

    Args:
      state: a lookahead state or any state tree containing exactly one.
      params: optional params tree used for leaves whose slow weights are not set.

    Example:
      >>> import torch, functional_optim as fo
      >>> from functional_optim.wrappers.lookahead import lookahead, lookahead_slow_params
      >>> tx = fo.named_chain(("la", lookahead(fo.sgd(lr=0.1))))
      >>> params = torch.ones(2)
      >>> lookahead_slow_params(tx.init(params), params)
      tensor([1., 1.])
    """
    found = find_state(state, LookaheadState, "lookahead")
    if params is None:
        return found.slow
    sel = select(found.slow, params=params, slow_set=found.slow_set)
    return sel.rebuild(k.where(sel["slow_set"], sel.updates, sel["params"]))


def find_state(state: Any, cls: type, what: str) -> Any:
    """The single node of type ``cls`` in the state tree (ValueError naming ``state`` if
    there is none or several)."""
    found = _instances(state, cls)
    if len(found) != 1:
        raise ValueError(f"state must contain exactly one {cls.__name__} (a {what} state), "
                         f"found {len(found)}")
    return found[0]


def _instances(node: Any, cls: type) -> list:
    if isinstance(node, cls):
        return [node]
    if isinstance(node, dict):
        children = list(node.values())
    elif isinstance(node, (list, tuple)):
        children = list(node)
    else:
        return []
    return [x for child in children for x in _instances(child, cls)]
