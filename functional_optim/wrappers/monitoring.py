"""Observe updates inside a chain: measurements kept in state (optax's ``_monitoring``).

A measurement is read back by name with ``fo.tree.get(state, name)``, e.g. the gradient
norm before clipping, as ``torch.nn.utils.clip_grad_norm_`` returns it::

    tx = fo.chain(snapshot("grad_norm", fo.tree.global_norm),
                  fo.clip_by_global_norm(1.0), fo.adam(1e-3))
    updates, state = tx.update(grads, state, params)
    fo.tree.get(state, "grad_norm")
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import optree
import torch

from ..base import EmptyState, GradientTransformation, init_empty_state
from ..combine import chain
from ..hyperparams import check_range
from ..transforms.momentum import ema

__all__ = ["SnapshotState", "MonitorState", "snapshot", "monitor", "measure_with_ema"]

Measure = Callable[[Any], Any]


class SnapshotState(NamedTuple):
    """State of :func:`snapshot`."""

    measurement: dict[str, Any]  # {measure_name: the measure of the last updates (a tree of tensors)}


class MonitorState(NamedTuple):
    """State of :func:`monitor`."""

    measurements: dict[str, Any]  # {name: the last measurement (a tree of tensors)}
    measure_states: tuple[Any, ...]  # the state of each measure transform, in the order of the names


def _unaliased(measurement: Any, updates: Any) -> Any:
    """``measurement`` with every tensor that is (a view of) an update leaf cloned.

    Needed under ``donate=True``: later transforms of the chain may overwrite the updates.
    """
    ups = [u for u in optree.tree_leaves(updates) if isinstance(u, torch.Tensor)]
    roots = [u if u._base is None else u._base for u in ups]

    def fix(m: Any) -> Any:
        if not isinstance(m, torch.Tensor):
            return m
        root = m if m._base is None else m._base
        return m.clone() if any(root is r for r in roots) else m

    return optree.tree_map(fix, measurement, none_is_leaf=True)


def _check_measure(name: str, measure: Any) -> None:
    if not callable(measure) or isinstance(measure, GradientTransformation):
        raise TypeError(f"{name} must be a callable updates -> measurement, got {type(measure).__name__}")


def snapshot(measure_name: str, measure: Measure) -> GradientTransformation:
    """Store ``measure(updates)`` in state under ``measure_name``; the updates pass through.

    In a chain, ``updates`` are the updates as transformed so far (e.g. the raw gradients
    when it comes first). ``init`` stores ``measure(params)``, so the state has the same
    structure before and after the first update. Under ``donate=True`` a measured tensor
    that is (a view of) an update leaf is copied, since later transforms may overwrite it.

    Args:
      measure_name: the name to read it back with ``fo.tree.get(state, measure_name)``.
      measure: ``measure(updates) -> tensor or tree of tensors`` (pure, no host sync if
        the update is compiled), e.g. ``fo.tree.global_norm``.

    Example:
      >>> import torch, functional_optim as fo
      >>> from functional_optim.wrappers.monitoring import snapshot
      >>> tx = fo.chain(snapshot("grad_norm", fo.tree.global_norm), fo.clip_by_global_norm(1.0))
      >>> params = {"a": torch.zeros(1), "b": torch.zeros(1)}
      >>> u, state = tx.update({"a": torch.tensor([3.0]), "b": torch.tensor([4.0])}, tx.init(params))
      >>> fo.tree.get(state, "grad_norm"), u["a"]
      (tensor(5.), tensor([0.6000]))
    """
    if not isinstance(measure_name, str):
        raise TypeError(f"measure_name must be a str, got {type(measure_name).__name__}")
    _check_measure("measure", measure)

    def init_fn(params):
        return SnapshotState({measure_name: measure(params)})

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del state, params, extra
        measurement = measure(updates)
        if donate:
            measurement = _unaliased(measurement, updates)
        return updates, SnapshotState({measure_name: measurement})

    return GradientTransformation(init_fn, update_fn)


def monitor(measures: dict[str, GradientTransformation | Measure]) -> GradientTransformation:
    """Store several measurements of the updates, stateful ones included; updates pass through.

    Each entry is either a function ``updates -> measurement`` or a GradientTransformation
    whose *output* is the measurement (e.g. :func:`measure_with_ema`); a transform gets
    ``params`` and the extra keyword arguments, but never ``donate`` (it must not overwrite
    the updates this wrapper passes on). ``init`` stores each measure applied to the
    params (a transform: its first update on the params), so the state keeps one
    structure from the start (optax starts from an empty dict).

    Args:
      measures: ``{name: function or transform}``; read back with ``fo.tree.get(state, name)``.

    Example:
      >>> import torch, functional_optim as fo
      >>> from functional_optim.wrappers.monitoring import monitor, measure_with_ema
      >>> tx = fo.chain(monitor({"norm": fo.tree.global_norm,
      ...                        "norm_ema": measure_with_ema(fo.tree.global_norm, 0.5)}),
      ...               fo.sgd(lr=0.1))
      >>> params = torch.zeros(2)
      >>> state = tx.init(params)
      >>> for g in (torch.tensor([3.0, 4.0]), torch.tensor([6.0, 8.0])):
      ...     u, state = tx.update(g, state, params)
      >>> fo.tree.get(state, "norm"), fo.tree.get(state, "norm_ema")  # (0.5 * 5 + 10) / 1.5
      (tensor(10.), tensor(8.3333))
    """
    if not isinstance(measures, dict):
        raise TypeError(f"measures must be a dict {{name: function or transform}}, got {type(measures).__name__}")
    transforms: dict[str, GradientTransformation] = {}
    for name, m in measures.items():
        if not isinstance(name, str):
            raise TypeError(f"measures keys must be str names, got {name!r}")
        if isinstance(m, GradientTransformation):
            transforms[name] = m
        elif callable(m):
            transforms[name] = _measuring(m)
        else:
            raise TypeError(f"measures[{name!r}] must be a callable or a GradientTransformation, "
                            f"got {type(m).__name__}")
    names = tuple(transforms)

    def init_fn(params):
        measurements, states = {}, []
        for name in names:
            tx = transforms[name]
            state = tx.init(params)
            measurements[name] = tx.update(params, state, params)[0]
            states.append(state)
        return MonitorState(measurements, tuple(states))

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        if not isinstance(state, MonitorState) or len(state.measure_states) != len(names):
            raise ValueError(f"state must be a MonitorState with {len(names)} measure states")
        measurements, states = {}, []
        for name, s in zip(names, state.measure_states):
            m, s = transforms[name].update(updates, s, params, **extra)
            measurements[name] = _unaliased(m, updates) if donate else m
            states.append(s)
        return updates, MonitorState(measurements, tuple(states))

    return GradientTransformation(init_fn, update_fn)


def _measuring(measure: Measure, dtype: torch.dtype | None = None, *,
               floating: bool = False) -> GradientTransformation:
    """A stateless transform whose output is ``measure(updates)`` (optionally cast to a
    floating dtype, so that it can be averaged)."""

    def cast(x: Any) -> Any:
        if not floating or not isinstance(x, torch.Tensor):
            return x
        if dtype is not None:
            return x.to(dtype)
        return x if x.is_floating_point() or x.is_complex() else x.to(torch.get_default_dtype())


    def update_fn(updates, state, params=None, **extra):
        del params, extra
        return optree.tree_map(cast, measure(updates), none_is_leaf=True), state

    return GradientTransformation(init_empty_state, update_fn)


def measure_with_ema(measure: Measure, decay: float | torch.Tensor, debias: bool = True,
                     accumulator_dtype: torch.dtype | None = None) -> GradientTransformation:
    """A measure for :func:`monitor`: the exponential moving average of ``measure(updates)``.

    ``ema = decay * ema + (1 - decay) * measure(updates)`` (``fo.ema``), divided by
    ``1 - decay**t`` when ``debias``. Its *output* is the (debiased) average, so use it
    inside :func:`monitor`, not directly in a chain. Boolean or integer measurements
    (``norm > threshold``) are averaged in ``accumulator_dtype`` or the default float
    dtype. The state is optax's: ``(EmptyState(), EmaState(count, ema))``.

    Args:
      measure: ``measure(updates) -> tensor or tree of tensors``.
      decay: the EMA decay, a number or 0-d tensor in [0, 1].
      debias: divide by ``1 - decay**t``. Default True.
      accumulator_dtype: dtype of the average (default: the measurement's, floats only).

    Example:
      >>> import torch, functional_optim as fo
      >>> from functional_optim.wrappers.monitoring import monitor, measure_with_ema
      >>> tx = monitor({"clipped": measure_with_ema(lambda u: fo.tree.global_norm(u) > 1.0, 0.9)})
      >>> state = tx.init(torch.zeros(2))
      >>> _, state = tx.update(torch.ones(2), state)
      >>> fo.tree.get(state, "clipped")
      tensor(1.)
    """
    _check_measure("measure", measure)
    check_range("decay", decay, 0.0, 1.0, high_inclusive=True)
    if not isinstance(debias, bool):
        raise TypeError(f"debias must be a bool, got {type(debias).__name__}")
    if accumulator_dtype is not None and not isinstance(accumulator_dtype, torch.dtype):
        raise TypeError(f"accumulator_dtype must be a torch.dtype or None, got {type(accumulator_dtype).__name__}")
    measuring = _measuring(measure, accumulator_dtype, floating=True)
    average = ema(decay, debias, accumulator_dtype=accumulator_dtype)
    # the average is shaped like the measurement, not like the params
    inner = chain(measuring, GradientTransformation(
        lambda params: average.init(measuring.update(params, EmptyState())[0]), average.update))

    def update_fn(updates, state, params=None, **extra):
        # never donated: the measurement may be the caller's updates themselves
        out, state = inner.update(updates, state, params, **{**extra, "donate": False})
        # in the average's dtype (debiasing by a float64 scalar promotes 0-d measurements)
        out = optree.tree_map(lambda o, a: o if o is None else o.to(a.dtype), out, state[1].ema,
                              none_is_leaf=True)
        return out, state

    return GradientTransformation(inner.init, update_fn)
