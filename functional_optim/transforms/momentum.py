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
    optax's ``trace``.

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
    undamped = concrete(dampening) == 0.0 and not isinstance(dampening, torch.Tensor)

    def init_fn(params):
        return TraceState(trace=zeros_like(params, accumulator_dtype), count=steps.leaf_counts(params))

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        sel = select(updates, trace=state.trace, count=state.count)
        g = k.cast(sel.updates, [b.dtype for b in sel["trace"]])
        counts = sel["count"]
        if undamped:
            weight = 1  # the buffer starts at zero, so its first update is exactly g
        else:  # 1 on a leaf's first update, 1 - dampening afterwards
            weight = steps.per_leaf(lambda t: 1 - dampening * (t != 0).to(t.dtype), counts, g)
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


def ema(decay: float | torch.Tensor, debias: bool = True, *,
        accumulator_dtype: torch.dtype | None = None) -> GradientTransformation:
    """Exponential moving average of the updates: ``ema = decay * ema + (1 - decay) * g``.

    Args:
      decay: a number or 0-d tensor in [0, 1].
      debias: divide by ``1 - decay**t`` (t: the leaf's update count), as in Adam.
      accumulator_dtype: dtype of the average (default: the param's dtype).

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.ema(0.9)
      >>> tx.update(torch.full((1,), 2.0), tx.init(torch.zeros(1)))[0]
      tensor([2.])
    """
    check_range("decay", decay, 0.0, 1.0, high_inclusive=True)

    def init_fn(params):
        return EmaState(count=steps.leaf_counts(params), ema=zeros_like(params, accumulator_dtype))

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        sel = select(updates, ema=state.ema, count=state.count)
        g = k.cast(sel.updates, [e.dtype for e in sel["ema"]])
        avg = k.lerp(sel["ema"], g, 1 - decay, donate=donate)
        counts = steps.increment(sel["count"], donate=donate)
        out = avg
        if debias:
            correction = steps.bias_correction(decay, steps.as_float(counts, avg))
            out = k.div(avg, correction, out=sel.updates if donate else None)
        elif donate:
            out = k.copy(sel.updates, avg)
        return sel.rebuild(out), EmaState(count=sel.rebuild(counts, "count"), ema=sel.rebuild(avg, "ema"))

    return mark_elementwise(GradientTransformation(init_fn, update_fn))
