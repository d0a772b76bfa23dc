"""Adam variants with torch.optim's numerics: NAdam (momentum schedule) and RAdam (rectified)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation, mark_elementwise
from ..hyperparams import check_number, check_range
from ..tree import map as tree_map
from ..tree import select, zeros_like
from .adaptive import ScaleByAdamState


class ScaleByNadamState(NamedTuple):
    """State of :func:`scale_by_nadam`."""

    count: Any  # tree of 0-d int32: updates each leaf has received (torch's per-param `step`)
    mu_product: Any  # tree of 0-d, torch's scalar dtype (float32 unless the default dtype is
    #                  float64): product of the momentum coefficients mu_1 ... mu_t (`mu_product`)
    mu: Any  # tree like params (mu_dtype or the param dtype): first moment (`exp_avg`)
    nu: Any  # tree like params: second moment (`exp_avg_sq`)


def _is_zero(value: Any) -> bool:
    return not isinstance(value, torch.Tensor) and value == 0


def scale_by_nadam(b1: float | torch.Tensor = 0.9, b2: float | torch.Tensor = 0.999,
                   eps: float | torch.Tensor = 1e-8, momentum_decay: float | torch.Tensor = 4e-3,
                   mu_dtype: torch.dtype | None = None, *,
                   nu_dtype: torch.dtype | None = None) -> GradientTransformation:
    """Scale updates by NAdam's moments with a momentum schedule, as ``torch.optim.NAdam``.

    With ``t`` the leaf's own update count and ``psi = momentum_decay``::

        mu_t = b1 * (1 - 0.5 * 0.96 ** (t * psi))       mu_{t+1} likewise with t + 1
        P_t = P_{t-1} * mu_t                             (kept in torch's scalar dtype, float32
                                                          by default, rounded as torch rounds it)
        m = lerp(m, g, 1 - b1);  v = b2 * v + (1 - b2) * g**2
        u = ((1 - mu_t) / (1 - P_t) * g + mu_{t+1} / (1 - P_t * mu_{t+1}) * m)
            / (sqrt(v / (1 - b2**t)) + eps)

    Note the denominator ``sqrt(v / bc2) + eps`` (not Adam's ``sqrt(v) / sqrt(bc2) + eps``).
    This is not optax's ``nadam`` (Adam with a Nesterov first moment: ``scale_by_adam(nesterov=True)``).

    Args:
      b1: decay of the first moment, in [0, 1). Default 0.9.
      b2: decay of the second moment, in [0, 1). Default 0.999.
      eps: added to the denominator outside the square root, >= 0. Default 1e-8.
      momentum_decay: ``psi`` of the momentum schedule, >= 0. Default 4e-3.
      mu_dtype: dtype of the first moment (default: the param's dtype).
      nu_dtype: dtype of the second moment (default: the param's dtype); with bf16 params,
        ``mu_dtype=nu_dtype=torch.float32`` computes the whole update in float32.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_nadam()
      >>> u, state = tx.update(torch.full((2,), 3.0), tx.init(torch.zeros(2)))
      >>> u.shape, state.mu_product.dtype
      (torch.Size([2]), torch.float32)
    """
    check_range("b1", b1, 0.0, 1.0)
    check_range("b2", b2, 0.0, 1.0)
    check_range("eps", eps, 0.0)
    check_range("momentum_decay", momentum_decay, 0.0)

    def init_fn(params):
        dtype = steps.torch_scalar_dtype()
        return ScaleByNadamState(
            count=steps.leaf_counts(params),
            mu_product=tree_map(lambda p: torch.ones((), dtype=dtype, device=p.device), params),
            mu=zeros_like(params, mu_dtype), nu=zeros_like(params, nu_dtype))

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        sel = select(updates, count=state.count, mu_product=state.mu_product, mu=state.mu, nu=state.nu)
        sel.check_like_updates("mu", "nu", dtypes=dict(mu=mu_dtype, nu=nu_dtype))
        g = k.upcast(sel.updates, mu_dtype, nu_dtype)
        counts = steps.increment(sel["count"], donate=donate)
        products = sel["mu_product"]
        product_dtype = products[0].dtype if products else torch.float32

        def scalars(t, product):
            mu_t = b1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))
            mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
            # torch: `mu_product *= mu_t` on a 0-d tensor of the scalar dtype (mu_t rounded to it)
            product = (product * mu_t.to(product_dtype).to(t.dtype)).to(product_dtype).to(t.dtype)
            return product, (1 - mu_t) / (1 - product), mu_next / (1 - product * mu_next), 1 - b2 ** t

        new_products, coef_g, coef_m, bc2 = steps.per_leaf_with(scalars, counts, g, products)
        coef_g, coef_m, bc2 = (k.scalars_for(s, g) for s in (coef_g, coef_m, bc2))

        mu = k.lerp(sel["mu"], k.cast(g, [m.dtype for m in sel["mu"]]), 1 - b1, donate=donate)
        nu = k.mul(sel["nu"], b2, donate=donate)
        nu = k.addcmul(nu, g, g, 1 - b2, donate=True)  # nu is ours: donated state or fresh
        numer = k.mul(g, coef_g, donate=donate)  # g's memory is free once the moments are updated
        numer = k.add(numer, mu, coef_m, donate=True)
        # numer / (sqrt(nu / bc2) + eps), the root made without a param-sized temporary
        out = k.div_root(numer, nu, eps, divisor=bc2, donate=True)

        new_state = ScaleByNadamState(
            count=sel.rebuild(counts, "count"),
            mu_product=sel.rebuild([p.to(d.dtype) for p, d in zip(new_products, products)], "mu_product"),
            mu=sel.rebuild(mu, "mu"), nu=sel.rebuild(nu, "nu"))
        return sel.rebuild(out), new_state

    return mark_elementwise(GradientTransformation(init_fn, update_fn))


def scale_by_radam(b1: float | torch.Tensor = 0.9, b2: float | torch.Tensor = 0.999,
                   eps: float | torch.Tensor = 1e-8, eps_root: float | torch.Tensor = 0.0,
                   threshold: float | torch.Tensor = 5.0, *, nesterov: bool = False,
                   mu_dtype: torch.dtype | None = None,
                   nu_dtype: torch.dtype | None = None) -> GradientTransformation:
    """Rectified Adam with ``torch.optim.RAdam``'s numerics (optax's name and arguments).

    With ``t`` the leaf's own update count, ``bc_i = 1 - b_i**t``,
    ``rho_inf = 2 / (1 - b2) - 1`` and ``rho_t = rho_inf - 2 t b2**t / bc2``::

        m = lerp(m, g, 1 - b1);  v = b2 * v + (1 - b2) * g**2
        u = (m / bc1) * r_t * sqrt(bc2) / (sqrt(v) + eps)     if rho_t > threshold
        u = m / bc1                                           otherwise (SGD with momentum)
        r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))

    torch's form, which differs from optax's in two places: ``eps`` is added to
    ``sqrt(v)`` before the bias correction (optax: ``sqrt(v / bc2) + eps``), and the
    switch is strict (``rho_t > threshold``; optax: ``>=``). The switch is taken per leaf
    with ``torch.where`` on 0-d scalars, so it traces and compiles without branching.
    With ``b2 = 0.999`` the rectified branch starts at ``t = 6``.

    Args:
      b1: decay of the first moment, in [0, 1). Default 0.9.
      b2: decay of the second moment, in [0, 1). Default 0.999.
      eps: added to ``sqrt(v)``, >= 0. Default 1e-8.
      eps_root: added inside the square root to the bias-corrected ``v``, >= 0. Default 0.
      threshold: the rectification applies where ``rho_t > threshold``. Default 5.0.
      nesterov: optax's Nesterov first moment ``b1 m / (1 - b1**(t+1)) + (1 - b1) g / bc1``
        in place of ``m / bc1``. Default False.
      mu_dtype: dtype of the first moment (default: the param's dtype).
      nu_dtype: dtype of the second moment (default: the param's dtype); with bf16 params,
        ``mu_dtype=nu_dtype=torch.float32`` computes the whole update in float32.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_radam()
      >>> tx.update(torch.full((2,), 3.0), tx.init(torch.zeros(2)))[0]  # t = 1: m / bc1
      tensor([3., 3.])
    """
    check_range("b1", b1, 0.0, 1.0)
    check_range("b2", b2, 0.0, 1.0)
    check_range("eps", eps, 0.0)
    check_range("eps_root", eps_root, 0.0)
    check_number("threshold", threshold)
    if not isinstance(nesterov, bool):
        raise TypeError(f"nesterov must be a bool, got {type(nesterov).__name__}")

    def init_fn(params):
        return ScaleByAdamState(count=steps.leaf_counts(params), mu=zeros_like(params, mu_dtype),
                                nu=zeros_like(params, nu_dtype), nu_max=None)

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        sel = select(updates, count=state.count, mu=state.mu, nu=state.nu)
        sel.check_like_updates("mu", "nu", dtypes=dict(mu=mu_dtype, nu=nu_dtype))
        g = k.upcast(sel.updates, mu_dtype, nu_dtype)
        counts = steps.increment(sel["count"], donate=donate)

        def scalars(t):
            bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
            rho_inf = 2 / (1 - b2) - 1
            rho_t = rho_inf - 2 * t * b2 ** t / bc2
            rectified = rho_t > threshold
            rho = torch.where(rectified, rho_t, 6.0)  # keeps sqrt's argument (and its grad) finite
            rect = ((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)) ** 0.5
            # u = numer / (sqrt(v) * scale + shift): rectified scale = bc1 / (r_t sqrt(bc2)),
            # shift = eps * scale; otherwise scale = 0, shift = bc1 (bc1 -> 1 with nesterov)
            first = 1 if nesterov else bc1
            scale = first / (rect * bc2.sqrt())
            return (torch.where(rectified, scale, 0.0), torch.where(rectified, eps * scale, first), bc2,
                    b1 / (1 - b1 ** (t + 1)), (1 - b1) / bc1)

        scale, shift, bc2, nest_mu, nest_g = (k.scalars_for(s, g) for s in steps.per_leaf(scalars, counts, g))

        mu = k.lerp(sel["mu"], k.cast(g, [m.dtype for m in sel["mu"]]), 1 - b1, donate=donate)
        nu = k.mul(sel["nu"], b2, donate=donate)
        nu = k.addcmul(nu, g, g, 1 - b2, donate=True)
        numer = mu
        if nesterov:  # before g's memory is reused below
            numer = k.add(k.mul(mu, nest_mu), g, nest_g, donate=True)
        scratch = g if donate else None
        second = nu if _is_zero(eps_root) else k.add(nu, [eps_root * b for b in bc2])
        denom = k.sqrt(second, out=scratch)
        # the SGD branch (scale 0; > 0 where rectified) never reads v: an overflowed v (inf)
        # times 0 would be NaN there, where torch (which skips v in that branch) is finite
        denom = k.masked_fill(denom, [c <= 0 for c in scale], 0.0, donate=donate)
        denom = k.mul(denom, scale, donate=donate)  # sqrt saves its output for backward
        denom = k.add(denom, shift, donate=True)
        out = k.div(numer, denom, out=scratch)

        new_state = ScaleByAdamState(count=sel.rebuild(counts, "count"), mu=sel.rebuild(mu, "mu"),
                                     nu=sel.rebuild(nu, "nu"), nu_max=None)
        return sel.rebuild(out), new_state

    return mark_elementwise(GradientTransformation(init_fn, update_fn))
