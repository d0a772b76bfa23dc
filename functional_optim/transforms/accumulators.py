"""Adaptive scalings driven by running accumulators other than Adam's moments:
the sum of squares (Adagrad), squared-update averages (Adadelta), the infinity norm (Adamax).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation, mark_elementwise
from ..hyperparams import check_range
from ..tree import select, zeros_like


class ScaleByRssState(NamedTuple):
    """State of :func:`scale_by_rss`."""

    count: Any  # tree of 0-d int32: updates each leaf has received (torch's per-param `step`)
    sum_of_squares: Any  # tree like params: initial_accumulator_value + sum of g**2 (torch's `sum`)


class ScaleByAdaDeltaState(NamedTuple):
    """State of :func:`scale_by_adadelta`."""

    count: Any  # tree of 0-d int32: updates each leaf has received (torch's `step`)
    e_g: Any  # tree like params: moving average of squared updates (torch's `square_avg`)
    e_x: Any  # tree like params: moving average of squared deltas (torch's `acc_delta`)


class ScaleByAdamaxState(NamedTuple):
    """State of :func:`scale_by_adamax`."""

    count: Any  # tree of 0-d int32: updates each leaf has received (torch's `step`)
    mu: Any  # tree like params: first moment (torch's `exp_avg`)
    nu: Any  # tree like params: decayed infinity norm max(b2 * nu, |g| + eps) (torch's `exp_inf`)


def _is_static_zero(value: Any) -> bool:
    return not isinstance(value, torch.Tensor) and value == 0


def scale_by_rss(initial_accumulator_value: float | torch.Tensor = 0.1, eps: float | torch.Tensor = 1e-7,
                 *, eps_in_sqrt: bool = True, lr_decay: float | torch.Tensor = 0.0,
                 state_dtype: torch.dtype | None = None) -> GradientTransformation:
    """Divide updates by the root of the sum of all their squares so far (Adagrad).

    ``sum = sum + g**2`` (started at ``initial_accumulator_value``); the update is
    ``g / sqrt(sum + eps)`` (``eps_in_sqrt=True``, optax's default) or
    ``g / (sqrt(sum) + eps)`` (torch.optim.Adagrad's), then divided by
    ``1 + (t - 1) * lr_decay`` with ``t`` the leaf's own update count (torch's ``lr_decay``).
    Complex updates are handled per real/imaginary component, as in torch (the
    accumulator starts at ``initial_accumulator_value`` in both components).
    Unlike optax, a zero ``sum`` with ``eps=0`` is not masked (it gives NaN, as in torch).

    Args:
      initial_accumulator_value: starting value of the accumulator, >= 0. Default 0.1 (optax's).
      eps: stabilising term, >= 0. Default 1e-7 (optax's).
      eps_in_sqrt: put ``eps`` inside the square root. Default True.
      lr_decay: torch's learning-rate decay per update of the leaf, >= 0. Default 0.
      state_dtype: dtype of the accumulators (default: the param's dtype). With bf16 params,
        ``torch.float32`` keeps the accumulators and the whole update (eps included) in
        float32; the update is cast back to the param dtype when applied.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_rss(initial_accumulator_value=0.0, eps=0.0)
      >>> tx.update(torch.tensor([-3.0, 4.0]), tx.init(torch.zeros(2)))[0]
      tensor([-1.,  1.])
    """
    check_range("initial_accumulator_value", initial_accumulator_value, 0.0)
    check_range("eps", eps, 0.0)
    check_range("lr_decay", lr_decay, 0.0)
    if not isinstance(eps_in_sqrt, bool):
        raise TypeError(f"eps_in_sqrt must be a bool, got {type(eps_in_sqrt).__name__}")
    decays = not _is_static_zero(lr_decay)

    def init_fn(params):
        sel = select(params)
        sums = k.zeros_like(sel.updates, state_dtype)
        if not _is_static_zero(initial_accumulator_value):  # per component, as torch's complex(v, v)
            sums = k.add(sums, initial_accumulator_value, donate=True)
        return ScaleByRssState(count=steps.leaf_counts(params), sum_of_squares=sel.rebuild(sums))

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        sel = select(updates, count=state.count, sum_of_squares=state.sum_of_squares)
        sel.check_like_updates("sum_of_squares", dtypes=dict(sum_of_squares=state_dtype))
        g = k.upcast(sel.updates, state_dtype)
        counts = steps.increment(sel["count"], donate=donate)
        sums = k.addcmul(sel["sum_of_squares"], g, g, 1, donate=donate)
        # g / (sqrt(sum) + eps), or g / sqrt(sum + eps): no param-sized temporary when donating
        out = k.div_root(g, sums, 0.0 if eps_in_sqrt else eps, eps_root=eps if eps_in_sqrt else 0.0,
                         donate=donate)
        if decays:  # torch: clr = lr / (1 + (step - 1) * lr_decay)
            factors = k.scalars_for(steps.per_leaf(lambda t: 1 + (t - 1) * lr_decay, counts, g), g)
            out = k.div(out, factors, donate=donate)
        new_state = ScaleByRssState(count=sel.rebuild(counts, "count"),
                                    sum_of_squares=sel.rebuild(sums, "sum_of_squares"))
        return sel.rebuild(out), new_state

    return mark_elementwise(GradientTransformation(init_fn, update_fn))


def scale_by_adadelta(rho: float | torch.Tensor = 0.9, eps: float | torch.Tensor = 1e-6, *,
                      state_dtype: torch.dtype | None = None) -> GradientTransformation:
    """Scale updates by the Adadelta rule (torch.optim.Adadelta's numerics, optax's defaults).

    ``e_g = rho * e_g + (1 - rho) * g**2``;
    ``delta = sqrt(e_x + eps) / sqrt(e_g + eps) * g``;
    ``e_x = rho * e_x + (1 - rho) * delta**2``; the update is ``delta`` (torch's ``lr``
    multiplies it afterwards). Complex updates are handled per real/imaginary component.

    Args:
      rho: decay of both moving averages, in [0, 1]. Default 0.9.
      eps: added inside both square roots, >= 0. Default 1e-6.
      state_dtype: dtype of the accumulators (default: the param's dtype). With bf16 params,
        ``torch.float32`` keeps the accumulators and the whole update (eps included) in
        float32; the update is cast back to the param dtype when applied.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_adadelta(rho=0.0, eps=1.0)
      >>> tx.update(torch.tensor([0.0, 3.0]), tx.init(torch.zeros(2)))[0]
      tensor([0.0000, 0.9487])
    """
    check_range("rho", rho, 0.0, 1.0, high_inclusive=True)
    check_range("eps", eps, 0.0)

    def init_fn(params):
        return ScaleByAdaDeltaState(count=steps.leaf_counts(params), e_g=zeros_like(params, state_dtype),
                                    e_x=zeros_like(params, state_dtype))

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        sel = select(updates, count=state.count, e_g=state.e_g, e_x=state.e_x)
        sel.check_like_updates("e_g", "e_x", dtypes=dict(e_g=state_dtype, e_x=state_dtype))
        g = k.upcast(sel.updates, state_dtype)
        counts = steps.increment(sel["count"], donate=donate)
        e_g = k.mul(sel["e_g"], rho, donate=donate)
        e_g = k.addcmul(e_g, g, g, 1 - rho, donate=True)  # e_g is ours: donated state or fresh
        # delta = g / sqrt(e_g + eps) * sqrt(e_x + eps), built in the donated g's buffer with
        # one scratch root at a time (torch: sqrt(e_x + eps) / sqrt(e_g + eps) * g, two temporaries)
        delta = k.div_root(g, e_g, eps_root=eps, donate=donate)
        delta = k.mul_root(delta, sel["e_x"], eps, donate=donate)
        e_x = k.mul(sel["e_x"], rho, donate=donate)
        e_x = k.addcmul(e_x, delta, delta, 1 - rho, donate=True)
        new_state = ScaleByAdaDeltaState(count=sel.rebuild(counts, "count"), e_g=sel.rebuild(e_g, "e_g"),
                                         e_x=sel.rebuild(e_x, "e_x"))
        return sel.rebuild(delta), new_state

    return mark_elementwise(GradientTransformation(init_fn, update_fn))


def scale_by_adamax(b1: float | torch.Tensor = 0.9, b2: float | torch.Tensor = 0.999,
                    eps: float | torch.Tensor = 1e-8, *,
                    state_dtype: torch.dtype | None = None) -> GradientTransformation:
    """Scale updates by the Adamax rule (Adam with an infinity norm), torch.optim.Adamax's numerics.

    ``mu = lerp(mu, g, 1 - b1)``; ``nu = max(b2 * nu, |g| + eps)`` (eps inside the max);
    the update is ``mu / (1 - b1**t) / nu`` with ``t`` the leaf's own update count (only
    the first moment is bias-corrected). Complex updates are handled per real/imaginary
    component, as in torch.

    Args:
      b1: decay of the first moment, in [0, 1). Default 0.9.
      b2: decay of the infinity norm, in [0, 1). Default 0.999.
      eps: added to ``|g|`` inside the max, >= 0. Default 1e-8.
      state_dtype: dtype of the accumulators (default: the param's dtype). With bf16 params,
        ``torch.float32`` keeps the accumulators and the whole update (eps included) in
        float32; the update is cast back to the param dtype when applied.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_adamax(eps=0.0)
      >>> tx.update(torch.tensor([-2.0, 4.0]), tx.init(torch.zeros(2)))[0]
      tensor([-1.,  1.])
    """
    check_range("b1", b1, 0.0, 1.0)
    check_range("b2", b2, 0.0, 1.0)
    check_range("eps", eps, 0.0)

    def init_fn(params):
        return ScaleByAdamaxState(count=steps.leaf_counts(params), mu=zeros_like(params, state_dtype),
                                  nu=zeros_like(params, state_dtype))

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        sel = select(updates, count=state.count, mu=state.mu, nu=state.nu)
        sel.check_like_updates("mu", "nu", dtypes=dict(mu=state_dtype, nu=state_dtype))
        g = k.upcast(sel.updates, state_dtype)
        counts = steps.increment(sel["count"], donate=donate)
        inv_bc1 = k.scalars_for(steps.per_leaf(lambda t: 1 / (1 - b1 ** t), counts, g), g)
        mu = k.lerp(sel["mu"], g, 1 - b1, donate=donate)
        magnitude = k.absolute(g, donate=donate)  # g is no longer needed: a donated g holds |g|
        magnitude = k.add(magnitude, eps, donate=True)  # abs saved g, not its output
        nu = k.mul(sel["nu"], b2, donate=donate)
        nu = k.maximum(nu, magnitude, donate=donate)
        # mu / nu / (1 - b1**t) as torch's mu / nu * (lr / (1 - b1**t)): one pass into g
        out = k.scaled_div(mu, nu, inv_bc1, out=g if donate else None)
        new_state = ScaleByAdamaxState(count=sel.rebuild(counts, "count"), mu=sel.rebuild(mu, "mu"),
                                       nu=sel.rebuild(nu, "nu"))
        return sel.rebuild(out), new_state

    return mark_elementwise(GradientTransformation(init_fn, update_fn))
