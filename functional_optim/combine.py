"""Combinators that build one transform out of several."""

from __future__ import annotations

from typing import Any

from .base import GradientTransformation, declare, needs, needs_of_all


def _check_transform(name: str, tx: Any) -> None:
    if not isinstance(tx, GradientTransformation):
        raise TypeError(f"{name} must be a GradientTransformation, got {type(tx).__name__}")


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply ``transforms`` one after another; the state is a tuple of their states.

    ``params`` and every extra keyword argument are passed to each transform.

    Args:
      *transforms: the transforms, first applied first.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.chain(fo.clip_by_global_norm(1.0), fo.scale_by_adam(), fo.scale_by_learning_rate(1e-3))
      >>> params = {"w": torch.zeros(3)}
      >>> updates, state = tx.update({"w": torch.ones(3)}, tx.init(params), params)
    """
    for i, tx in enumerate(transforms):
        _check_transform(f"transforms[{i}]", tx)

    def init_fn(params):
        return tuple(tx.init(params) for tx in transforms)

    def update_fn(updates, state, params=None, **extra):
        if not isinstance(state, tuple) or len(state) != len(transforms):
            got = len(state) if isinstance(state, tuple) else type(state).__name__
            raise ValueError(f"state must be a tuple of {len(transforms)} states (one per chained "
                             f"transform), got {got}")
        new_state = []
        for tx, s in zip(transforms, state):
            updates, s = tx.update(updates, s, params, **extra)
            new_state.append(s)
        return updates, tuple(new_state)

    tx = GradientTransformation(init_fn, update_fn)
    update_fn.parts = transforms  # read by :func:`split_final_scale`
    return declare(tx, needs_of_all(*transforms))


def split_final_scale(tx: GradientTransformation) -> tuple[GradientTransformation, float] | None:
    """``(head, factor)`` when ``tx`` is a :func:`chain` ending in a stateless
    multiplication by a Python number (``scale``, ``scale_by_learning_rate`` with a number):
    ``tx``'s updates are then ``factor * head's``, and ``head``'s state is ``tx``'s without
    its last entry. None otherwise.

    For callers that apply updates themselves: ``p.add_(u, alpha=factor)`` adds the scaled
    update in one pass instead of two (the eager adapter does).

    Example:
      >>> import functional_optim as fo
      >>> head, factor = fo.combine.split_final_scale(fo.chain(fo.scale_by_sign(), fo.scale(0.5)))
      >>> factor
      0.5
    """
    parts = getattr(tx.update, "parts", None)
    if not parts:
        return None
    factor = getattr(parts[-1].update, "constant_factor", None)
    if factor is None:
        return None
    return chain(*parts[:-1]), factor


def named_chain(*transforms: tuple[str, GradientTransformation]) -> GradientTransformation:
    """Like :func:`chain`, with named parts: the state is a dict ``{name: state}``.

    Args:
      *transforms: ``(name, transform)`` pairs with unique names.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.named_chain(("clip", fo.clip_by_global_norm(1.0)), ("adam", fo.adam(1e-3)))
      >>> state = tx.init({"w": torch.zeros(3)})
      >>> sorted(state)
      ['adam', 'clip']
    """
    names = []
    for i, pair in enumerate(transforms):
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)):
            raise TypeError(f"transforms[{i}] must be a (name, transform) pair, got {pair!r}")
        _check_transform(f"transforms[{i}][1]", pair[1])
        names.append(pair[0])
    if len(set(names)) != len(names):
        raise ValueError(f"named_chain names must be unique, got {names}")
    inner = chain(*(tx for _, tx in transforms))

    def init_fn(params):
        return dict(zip(names, inner.init(params)))

    def update_fn(updates, state, params=None, **extra):
        if not isinstance(state, dict) or list(state) != names:
            got = list(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state must be a dict with keys {names}, got {got}")
        updates, states = inner.update(updates, tuple(state[n] for n in names), params, **extra)
        return updates, dict(zip(names, states))

    tx = GradientTransformation(init_fn, update_fn)
    return declare(tx, needs(inner))
