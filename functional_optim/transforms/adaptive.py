"""Adaptive scalings: Adam's moments and RMS normalisation."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation, mark_elementwise
from ..hyperparams import check_range
from ..tree import full_like, select, zeros_like


class ScaleByAdamState(NamedTuple):
    """State of :func:`scale_by_adam`."""

    count: Any  # tree of 0-d int32: updates each leaf has received (torch's per-param `step`)
    mu: Any  # tree like params (mu_dtype or the param dtype): first moment
    nu: Any  # tree like params (nu_dtype or the param dtype): second moment
    nu_max: Any  # tree like params: running max of nu with amsgrad, else None


class ScaleByRmsState(NamedTuple):
    """State of :func:`scale_by_rms`."""

    count: Any  # tree of 0-d int32: updates each leaf has received
    nu: Any  # tree like params: moving average of squared updates
    mu: Any = None  # tree like params: moving average of the updates with centered, else None


def _check_betas(b1: Any, b2: Any) -> None:
    check_range("b1", b1, 0.0, 1.0)
    check_range("b2", b2, 0.0, 1.0)


def _is_zero(value: Any) -> bool:
    return not isinstance(value, torch.Tensor) and value == 0


def scale_by_adam(b1: float | torch.Tensor = 0.9, b2: float | torch.Tensor = 0.999,
                  eps: float | torch.Tensor = 1e-8, eps_root: float | torch.Tensor = 0.0,
                  mu_dtype: torch.dtype | None = None, *, nu_dtype: torch.dtype | None = None,
                  nesterov: bool = False,
                  amsgrad: bool = False) -> GradientTransformation:
    """Scale updates by Adam's bias-corrected moments, with torch.optim.Adam's numerics.

    ``mu = lerp(mu, g, 1 - b1)``, ``nu = b2 * nu + (1 - b2) * g**2`` and the update is
    ``(mu / bc1) / (sqrt(nu + eps_root * bc2) / sqrt(bc2) + eps)`` with
    ``bc_i = 1 - b_i**t``, ``t`` the leaf's own update count: torch's formula (up to
    rounding: the scalar factors are applied in one place), and with ``eps_root`` optax's
    ``sqrt(nu_hat + eps_root)``.

    Args:
      b1: decay of the first moment, in [0, 1). Default 0.9.
      b2: decay of the second moment, in [0, 1). Default 0.999.
      eps: added to the denominator outside the square root, >= 0. Default 1e-8.
      eps_root: added inside the square root (to the bias-corrected nu), >= 0. Default 0.
      mu_dtype: dtype of the first moment (default: the param's dtype).
      nu_dtype: dtype of the second moment(s) (default: the param's dtype). With bf16 params,
        ``mu_dtype=nu_dtype=torch.float32`` keeps the moments and the whole update
        (eps included) in float32; the update is cast back when applied.
      nesterov: Nesterov-accelerated first moment (optax's NAdam form). Default False.
      amsgrad: torch's AMSGrad: divide by the running maximum of ``nu``. Default False.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_adam()
      >>> u, state = tx.update(torch.full((2,), 3.0), tx.init(torch.zeros(2)))
      >>> torch.allclose(u, torch.ones(2))
      True
    """
    _check_betas(b1, b2)
    check_range("eps", eps, 0.0)
    check_range("eps_root", eps_root, 0.0)

    def init_fn(params):
        return ScaleByAdamState(
            count=steps.leaf_counts(params), mu=zeros_like(params, mu_dtype),
            nu=zeros_like(params, nu_dtype), nu_max=zeros_like(params, nu_dtype) if amsgrad else None)

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        trees = dict(count=state.count, mu=state.mu, nu=state.nu)
        if amsgrad:
            trees["nu_max"] = state.nu_max
        sel = select(updates, **trees)
        sel.check_like_updates(*list(trees)[1:], dtypes=dict(mu=mu_dtype, nu=nu_dtype, nu_max=nu_dtype))
        g = k.upcast(sel.updates, mu_dtype, nu_dtype)  # moments wider than g: compute in their dtype
        counts = steps.increment(sel["count"], donate=donate)
        # per-step scalars, once per leaf: 1 - b1**t, sqrt(1 - b2**t), 1 - b2**t and
        # Nesterov's coefficients b1 / (1 - b1**(t+1)) and (1 - b1) / (1 - b1**t)
        # Per-step scalars, once per leaf. Without nesterov, 1/bc1 is folded into the
        # denominator: u = mu / (bc1 * sqrt(nu) / sqrt(bc2) + bc1 * eps), one pass fewer.
        # Nesterov's numerator b1/(1 - b1**(t+1)) * mu + (1 - b1)/(1 - b1**t) * g carries its
        # own corrections.
        # (scalars_for: a 0-d leaf keeps its dtype, as with torch's Python-number scalars)
        sqrt_coef, eps_coef, bc2, nest_mu, nest_g = (k.scalars_for(s, g) for s in steps.per_leaf(
            lambda t: ((1 - b2 ** t).rsqrt() * (1 if nesterov else 1 - b1 ** t),
                       eps * (1 if nesterov else 1 - b1 ** t), 1 - b2 ** t,
                       b1 / (1 - b1 ** (t + 1)), (1 - b1) / (1 - b1 ** t)), counts, g))

        mu = k.lerp(sel["mu"], k.cast(g, [m.dtype for m in sel["mu"]]), 1 - b1, donate=donate)
        nu = k.mul(sel["nu"], b2, donate=donate)
        nu = k.addcmul(nu, g, g, 1 - b2, donate=True)  # nu is ours: donated state or fresh
        nu_max = k.maximum(sel["nu_max"], nu, donate=donate) if amsgrad else None
        second = nu_max if amsgrad else nu
        numer = mu
        if nesterov:  # before g's memory is reused below
            numer = k.add(k.mul(mu, nest_mu), g, nest_g, donate=True)

        # a donated g is no longer needed: reuse its memory (if the result has its dtype)
        scratch = g if donate and all(x.dtype == v.dtype == m.dtype
                                      for x, v, m in zip(g, second, numer)) else None
        if not _is_zero(eps_root):
            second = k.add(second, [eps_root * b for b in bc2])
        denom = k.sqrt(second, out=scratch)
        # in place only when donating: autograd saved sqrt's output for its backward
        denom = k.mul(denom, sqrt_coef, donate=donate)
        denom = k.add(denom, eps_coef, donate=donate)
        out = k.div(numer, denom, out=scratch)

        new_state = ScaleByAdamState(
            count=sel.rebuild(counts, "count"), mu=sel.rebuild(mu, "mu"), nu=sel.rebuild(nu, "nu"),
            nu_max=sel.rebuild(nu_max, "nu_max") if amsgrad else None)
        return sel.rebuild(out), new_state

    return mark_elementwise(GradientTransformation(init_fn, update_fn))


def scale_by_rms(decay: float | torch.Tensor = 0.9, eps: float | torch.Tensor = 1e-8,
                 initial_scale: float = 0.0, eps_in_sqrt: bool = True,
                 bias_correction: bool = False, *, centered: bool = False,
                 state_dtype: torch.dtype | None = None) -> GradientTransformation:
    """Divide updates by the root of a moving average of their squares (RMSProp).

    ``nu = decay * nu + (1 - decay) * g**2``; the update is ``g / sqrt(nu + eps)``
    (``eps_in_sqrt=True``, optax's default) or ``g / (sqrt(nu) + eps)`` (torch's).
    With ``centered`` (torch's ``centered=True``, optax's :func:`scale_by_stddev`) it also
    keeps ``mu = lerp(mu, g, 1 - decay)`` and uses the variance ``nu - mu**2`` in place
    of ``nu``. Complex updates are handled per real/imaginary component, as in torch.

    Args:
      decay: decay of the moving averages, in [0, 1]. Default 0.9.
      eps: stabilising term, >= 0. Default 1e-8.
      initial_scale: initial value of ``nu``. Default 0.
      eps_in_sqrt: put ``eps`` inside the square root. Default True.
      bias_correction: divide ``nu`` (and ``mu``) by ``1 - decay**t``. Default False.
      centered: divide by the root of the centered second moment. Default False.
      state_dtype: dtype of the accumulators (default: the param's dtype). With bf16 params,
        ``torch.float32`` keeps the accumulators and the whole update (eps included) in
        float32; the update is cast back to the param dtype when applied.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_rms(decay=0.0, eps=0.0)
      >>> tx.update(torch.tensor([-2.0, 4.0]), tx.init(torch.zeros(2)))[0]
      tensor([-1.,  1.])
    """
    check_range("decay", decay, 0.0, 1.0, high_inclusive=True)
    check_range("eps", eps, 0.0)
    check_range("initial_scale", initial_scale, 0.0)
    if not isinstance(centered, bool):
        raise TypeError(f"centered must be a bool, got {type(centered).__name__}")

    def init_fn(params):
        return ScaleByRmsState(count=steps.leaf_counts(params),
                               nu=full_like(params, initial_scale, state_dtype),
                               mu=zeros_like(params, state_dtype) if centered else None)

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        trees = dict(count=state.count, nu=state.nu)
        if centered:
            trees["mu"] = state.mu
        sel = select(updates, **trees)
        sel.check_like_updates(*list(trees)[1:], dtypes=dict.fromkeys(list(trees)[1:], state_dtype))
        g = k.upcast(sel.updates, state_dtype)
        counts = steps.increment(sel["count"], donate=donate)
        nu = k.mul(sel["nu"], decay, donate=donate)
        nu = k.addcmul(nu, g, g, 1 - decay, donate=True)
        mu = k.lerp(sel["mu"], g, 1 - decay, donate=donate) if centered else None
        eps_out, eps_root = (0.0, eps) if eps_in_sqrt else (eps, 0.0)
        if bias_correction:
            correction = steps.bias_correction(decay, steps.as_float(counts, g))
            second, mean = k.div(nu, correction), k.div(mu, correction) if centered else None
            if centered:  # nu - mu**2, as torch's square_avg.addcmul(grad_avg, grad_avg, value=-1)
                second = k.addcmul(second, mean, mean, -1, donate=True)
            out = k.div_root(g, second, eps_out, eps_root=eps_root, donate=donate)
        else:  # without a param-sized temporary when donating
            out = k.div_root(g, nu, eps_out, eps_root=eps_root, centers=mu, donate=donate)
        new_state = ScaleByRmsState(count=sel.rebuild(counts, "count"), nu=sel.rebuild(nu, "nu"),
                                    mu=sel.rebuild(mu, "mu") if centered else None)
        return sel.rebuild(out), new_state

    return mark_elementwise(GradientTransformation(init_fn, update_fn))


def scale_by_stddev(decay: float | torch.Tensor = 0.9, eps: float | torch.Tensor = 1e-8,
                    initial_scale: float = 0.0, eps_in_sqrt: bool = True,
                    bias_correction: bool = False, *,
                    state_dtype: torch.dtype | None = None) -> GradientTransformation:
    """Divide updates by the root of the centered moving average of their squares.

    optax's name for :func:`scale_by_rms` with ``centered=True`` (torch's centered RMSprop):
    ``mu = lerp(mu, g, 1 - decay)``, ``nu = decay * nu + (1 - decay) * g**2``, update
    ``g / sqrt(nu - mu**2 + eps)`` or, with ``eps_in_sqrt=False``, ``g / (sqrt(nu - mu**2) + eps)``.
    The state is a :class:`ScaleByRmsState` whose ``mu`` is set.

    Args:
      decay: decay of the moving averages, in [0, 1]. Default 0.9.
      eps: stabilising term, >= 0. Default 1e-8.
      initial_scale: initial value of ``nu``. Default 0.
      eps_in_sqrt: put ``eps`` inside the square root. Default True.
      bias_correction: divide ``mu`` and ``nu`` by ``1 - decay**t``. Default False.
      state_dtype: dtype of the accumulators (default: the param's dtype). With bf16 params,
        ``torch.float32`` keeps the accumulators and the whole update (eps included) in
        float32; the update is cast back to the param dtype when applied.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_stddev(decay=0.5, eps=0.0)
      >>> tx.update(torch.tensor([2.0, -4.0]), tx.init(torch.zeros(2)))[0]
      tensor([ 2., -2.])
    """
    return scale_by_rms(decay, eps, initial_scale, eps_in_sqrt, bias_correction, centered=True,
                        state_dtype=state_dtype)
