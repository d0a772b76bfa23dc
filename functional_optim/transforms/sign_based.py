"""Sign-based scalings: Rprop's per-element step sizes (torch.optim.Rprop)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation, ScalarOrSchedule, mark_elementwise
from ..hyperparams import check_number, check_range, concrete, is_schedule, value_at
from ..tree import select, zeros_like


class ScaleByRpropState(NamedTuple):
    """State of :func:`scale_by_rprop`."""

    count: Any  # tree of 0-d int32: updates each leaf has received (torch's per-param `step`)
    step_sizes: Any  # tree like params: per-element step sizes (torch's `step_size`; complex
    #                  params hold one per real/imaginary component); 0 until a leaf's first update
    prev_updates: Any  # tree like params: the previous gradient, zeroed where its sign flipped (`prev`)
    schedule_count: Any  # 0-d int32: updates so far, the learning-rate schedule's argument
    #                      (None unless the learning rate is a schedule)


def _as_tensor(x: Any, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, dtype=like.dtype, device=like.device)


def scale_by_rprop(learning_rate: ScalarOrSchedule, eta_minus: float | torch.Tensor = 0.5,
                   eta_plus: float | torch.Tensor = 1.2, min_step_size: float | torch.Tensor = 1e-6,
                   max_step_size: float | torch.Tensor = 50.0) -> GradientTransformation:
    """Rprop with ``torch.optim.Rprop``'s semantics (optax's name and arguments).

    Per element (per real/imaginary component for complex), with ``s = sign(g * prev)``::

        step_size = clamp(step_size * (eta_plus if s > 0 else eta_minus if s < 0 else 1),
                          min_step_size, max_step_size)
        g = 0 where s < 0;   prev = g;   u = sign(g) * step_size

    A leaf's step sizes start at ``learning_rate`` (clamped) at its first update. As in
    optax, the output points along the gradient: negate it (``fo.scale(-1.0)``, as
    ``fo.rprop`` does) to descend. This is torch's algorithm, not optax's variant (which
    keeps the step size when ``s == 0`` and undoes the previous step on a sign flip).

    The learning rate enters only as the initial step size: a leaf's step sizes become
    ``clamp(lr, min_step_size, max_step_size)`` at its first update, with the learning
    rate of that moment (torch initialises state lazily), and ignore it afterwards. A 0-d
    tensor learning rate is read at that moment and is differentiable through it; a
    schedule is called with the number of updates so far (``schedule_count``).

    Args:
      learning_rate: initial step size >= 0; a number, a 0-d tensor or a schedule.
      eta_minus: factor on a sign flip, in (0, 1). Default 0.5.
      eta_plus: factor when the sign is kept, > 1. Default 1.2.
      min_step_size: smallest step size. Default 1e-6.
      max_step_size: largest step size. Default 50.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_rprop(0.1)
      >>> state = tx.init(torch.zeros(2))
      >>> u, state = tx.update(torch.tensor([1.0, -2.0]), state)
      >>> u, tx.update(torch.tensor([3.0, 1.0]), state)[0]
      (tensor([ 0.1000, -0.1000]), tensor([0.1200, 0.0000]))
    """
    check_range("learning_rate", learning_rate, 0.0, schedule_ok=True)
    check_number("eta_minus", eta_minus)
    check_number("eta_plus", eta_plus)
    check_number("min_step_size", min_step_size)
    check_number("max_step_size", max_step_size)
    minus, plus = concrete(eta_minus), concrete(eta_plus)
    if minus is not None and not 0.0 < minus < 1.0:
        raise ValueError(f"Invalid eta_minus: {minus} (expected 0 < eta_minus < 1)")
    if plus is not None and not plus > 1.0:
        raise ValueError(f"Invalid eta_plus: {plus} (expected eta_plus > 1)")
    scheduled = is_schedule(learning_rate)

    def init_fn(params):
        return ScaleByRpropState(
            count=steps.leaf_counts(params), step_sizes=zeros_like(params), prev_updates=zeros_like(params),
            schedule_count=steps.zero_count(steps.first_device(params)) if scheduled else None)

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        sel = select(updates, count=state.count, step_sizes=state.step_sizes, prev_updates=state.prev_updates)
        sel.check_like_updates("step_sizes", "prev_updates")
        g, prev = sel.updates, sel["prev_updates"]
        lr = value_at(learning_rate, state.schedule_count) if scheduled else learning_rate
        counts = steps.increment(sel["count"], donate=donate)

        def lower_bound(t):  # a leaf's first update: step_size (0) * 1 clamped up to clamp(lr)
            low = _as_tensor(min_step_size, t)
            first = torch.minimum(torch.maximum(_as_tensor(lr, t), low), _as_tensor(max_step_size, t))
            return torch.where(t == 1, first, low)

        lows = k.scalars_for(steps.per_leaf(lower_bound, counts, g), g)
        tests = k.mul(g, prev)  # sign(g * prev) per element
        new_prev = k.select_by_sign(tests, g, 0.0, g, out=prev if donate else None)
        factor = k.select_by_sign(tests, eta_plus, eta_minus, 1.0, out=tests if donate else None)
        sizes = k.mul(sel["step_sizes"], factor, donate=donate)
        sizes = k.clamp(sizes, lows, max_step_size, donate=True)
        out = k.sign(new_prev, out=g if donate else None)
        out = k.mul(out, sizes, donate=True)

        new_state = ScaleByRpropState(
            count=sel.rebuild(counts, "count"), step_sizes=sel.rebuild(sizes, "step_sizes"),
            prev_updates=sel.rebuild(new_prev, "prev_updates"),
            schedule_count=state.schedule_count + 1 if scheduled else None)
        return sel.rebuild(out), new_state

    return mark_elementwise(GradientTransformation(init_fn, update_fn))
