"""Momentum and moving averages of the updates."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation, mark_elementwise
from ..hyperparams import check_range, concrete
from ..tree import select, zeros_like


class TraceState(NamedTuple):
    """State of :func:`trace`."""

    trace: Any  # tree like params (accumulator_dtype or the param dtype): the momentum buffer
    count: Any  # tree of 0-d int32: updates each leaf has received


class EmaState(NamedTuple):
    """State of :func:`ema`."""

    count: Any  # tree of 0-d int32: updates each leaf has received
    ema: Any  # tree like params: the (not debiased) moving average


def trace(decay: float | torch.Tensor, nesterov: bool = False, *, dampening: float | torch.Tensor = 0.0,
          accumulator_dtype: torch.dtype | None = None) -> GradientTransformation:
    """Momentum with torch.optim.SGD's semantics.

    ``buf = decay * buf + (1 - dampening) * g``, except that a leaf's first update sets
    ``buf = g`` (torch initialises the buffer with the gradient, undampened). The output
    is ``buf``, or ``g + decay * buf`` with ``nesterov``. With ``dampening=0`` this is
    optax's ``trace``. Where ``decay`` is 0 (a number, or a 0-d tensor holding 0) the
    dampening is ignored, as torch.optim.SGD ignores it without momentum: ``buf = g``.
    A tensor ``decay`` is never read on the host (the 0 test is a mask in the update), so
    the update stays differentiable in it: its derivative at 0 is the one from above
    (``buf``), where torch's branch would give 0.

    Args:
      decay: momentum coefficient, a number or 0-d tensor >= 0.
      nesterov: use Nesterov momentum (default False).
      dampening: dampening of the gradient term (default 0).
      accumulator_dtype: dtype of the buffer (default: the param's dtype).

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.trace(0.9)
      >>> state = tx.init(torch.zeros(1))
      >>> u, state = tx.update(torch.ones(1), state)
      >>> tx.update(torch.ones(1), state)[0]
      tensor([1.9000])
    """
    check_range("decay", decay, 0.0)
    check_range("dampening", dampening, None)
    # torch.optim.SGD ignores dampening when momentum is 0 (it checks ``momentum != 0``,
    # true or false even for a 0-d tensor): buf = g then, whatever the dampening
    undamped = (concrete(dampening) == 0.0 and not isinstance(dampening, torch.Tensor)
                or not isinstance(decay, torch.Tensor) and decay == 0)

    def init_fn(params):
        return TraceState(trace=zeros_like(params, accumulator_dtype), count=steps.leaf_counts(params))

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        sel = select(updates, trace=state.trace, count=state.count)
        sel.check_like_updates("trace", dtypes=dict(trace=accumulator_dtype))
        g = k.cast(sel.updates, [b.dtype for b in sel["trace"]])
        counts = sel["count"]
        if undamped:
            weight = 1  # the buffer starts at zero, so its first update is exactly g
        else:  # 1 on a leaf's first update, 1 - dampening afterwards
            weight = k.scalars_for(steps.per_leaf(lambda t: 1 - dampening * _damped(t, decay), counts, g), g)
        same_dtype = all(a is b for a, b in zip(g, sel.updates))  # no accumulator_dtype cast
        if donate and undamped and not nesterov and same_dtype:
            # g + decay * buf written into the donated g, then kept as the new buffer:
            # two passes over memory instead of three (the buffer starts at zero, so a
            # leaf's first update is exactly g)
            out = k.add(sel.updates, sel["trace"], decay, donate=True)
            buf = k.copy(sel["trace"], out)
            return sel.rebuild(out), TraceState(
                trace=sel.rebuild(buf, "trace"),
                count=sel.rebuild(steps.increment(counts, donate=True), "count"))
        buf = k.mul(sel["trace"], decay, donate=donate)
        buf = k.add(buf, g, weight, donate=True)  # buf is ours: the state's (donated) or fresh
        if nesterov:
            out = k.add(sel.updates, buf, decay, donate=donate)
        elif donate:  # never hand out the state's buffer as updates a caller may overwrite
            out = k.copy(sel.updates, buf)
        else:
            out = buf
        new_state = TraceState(trace=sel.rebuild(buf, "trace"),
                               count=sel.rebuild(steps.increment(counts, donate=donate), "count"))
        return sel.rebuild(out), new_state

    if nesterov and concrete(decay) == 0.0:
        raise ValueError("nesterov=True requires decay > 0")
    return mark_elementwise(GradientTransformation(init_fn, update_fn))


def _damped(t: torch.Tensor, decay: Any) -> torch.Tensor:
    # 1 where the dampening applies: after a leaf's first update, and (a 0-d tensor decay,
    # whose value is not read on the host) where the decay is not 0. The mask carries no
    # derivative, so the update stays differentiable in decay (d/d decay = buf) and in dampening
    damped = t != 0
    if isinstance(decay, torch.Tensor):
        damped = damped & (decay != 0).to(t.device)
    return damped.to(t.dtype)


def ema(decay: float | torch.Tensor, debias: bool = True, *,
        accumulator_dtype: torch.dtype | None = None, nesterov: bool = False) -> GradientTransformation:
    """Exponential moving average of the updates: ``ema = decay * ema + (1 - decay) * g``.

    Computed as ``ema = lerp(ema, g, 1 - decay)``; with ``nesterov`` the output is
    ``lerp(g, ema, decay)`` (the average looked one step ahead: torch.optim.Muon's
    momentum), before any debiasing.

    Args:
      decay: a number or 0-d tensor in [0, 1].
      debias: divide by ``1 - decay**t`` (t: the leaf's update count), as in Adam.
      accumulator_dtype: dtype of the average (default: the param's dtype).
      nesterov: output ``lerp(g, ema, decay)`` instead of ``ema``. Default False.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.ema(0.9)
      >>> tx.update(torch.full((1,), 2.0), tx.init(torch.zeros(1)))[0]
      tensor([2.])
    """
    check_range("decay", decay, 0.0, 1.0, high_inclusive=True)
    if not isinstance(nesterov, bool):
        raise TypeError(f"nesterov must be a bool, got {type(nesterov).__name__}")

    def init_fn(params):
        return EmaState(count=steps.leaf_counts(params), ema=zeros_like(params, accumulator_dtype))

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        sel = select(updates, ema=state.ema, count=state.count)
        g = k.cast(sel.updates, [e.dtype for e in sel["ema"]])
        avg = k.lerp(sel["ema"], g, 1 - decay, donate=donate)
        counts = steps.increment(sel["count"], donate=donate)
        out = avg
        if nesterov:  # a fresh tensor, or g's own buffer when donated
            out = k.lerp(g, avg, decay, donate=donate and all(a is b for a, b in zip(g, sel.updates)))
        if debias:
            correction = steps.bias_correction(decay, steps.as_float(counts, avg))
            out = k.div(out, correction, out=sel.updates if donate else None)
        elif donate and not nesterov:
            out = k.copy(sel.updates, avg)
        return sel.rebuild(out), EmaState(count=sel.rebuild(counts, "count"), ema=sel.rebuild(avg, "ema"))

    return mark_elementwise(GradientTransformation(init_fn, update_fn))
