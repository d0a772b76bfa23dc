"""Transforms of timm's Adam family: AdaBelief's belief moment, timm's Adam step (AdamP's
Nesterov form, StableAdamW's RMS clipping), NAdamLegacy's momentum schedule, SGDP's
zero-started momentum. The aliases are in :mod:`functional_optim.aliases.timm_adam_family`."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation, Needs, declare, mark_elementwise
from ..hyperparams import check_range, concrete
from ..tree import map as tree_map
from ..tree import select, zeros_like
from .adaptive import ScaleByAdamState
from .momentum import TraceState

_LOW_PRECISION = (torch.float16, torch.bfloat16)


class ScaleByBeliefState(NamedTuple):
    """State of :func:`scale_by_belief`."""

    count: Any  # tree of 0-d int32: updates each leaf has received (timm's per-param `step`)
    mu: Any  # tree like params (float32 for bf16/fp16 params): first moment (`exp_avg`)
    nu: Any  # tree like params: the belief, EMA of (g - mu)**2 plus eps each step (`exp_avg_var`)
    nu_max: Any  # tree like params: running max of nu with amsgrad (`max_exp_avg_var`), else None


class ScaleByNadamLegacyState(NamedTuple):
    """State of :func:`scale_by_nadam_legacy`."""

    count: Any  # tree of 0-d int32: updates each leaf has received (timm's `step`)
    m_schedule: Any  # tree of 0-d float64 (per-step scalar dtype): product of the momentum cache
    mu: Any  # tree like params: first moment (`exp_avg`)
    nu: Any  # tree like params: second moment (`exp_avg_sq`)


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def _timm_state_dtype(p: torch.Tensor, state_dtype: torch.dtype | None) -> torch.dtype:
    # timm keeps AdaBelief's state in float32 for bf16/fp16 params, else in the param dtype
    if state_dtype is not None:
        return state_dtype
    return torch.float32 if p.dtype in _LOW_PRECISION else p.dtype


def scale_by_belief(b1: float | torch.Tensor = 0.9, b2: float | torch.Tensor = 0.999,
                    eps: float | torch.Tensor = 1e-16, amsgrad: bool = False, rectify: bool = True,
                    degenerated_to_sgd: bool = True, *,
                    state_dtype: torch.dtype | None = None) -> GradientTransformation:
    r"""Scale updates by AdaBelief's moments, as ``timm.optim.AdaBelief`` computes them.

    With :math:`t` the leaf's own update count, :math:`bc_i = 1 - \beta_i^t`:

    .. math::

        m_t &= \operatorname{lerp}(m_{t-1}, g_t, 1 - \beta_1) \\
        s_t &= \beta_2 s_{t-1} + (1 - \beta_2)(g_t - m_t)^2 + \epsilon
              \quad (\epsilon \text{ is added into the state, every step}) \\
        \hat s_t &= \max(\hat s_{t-1}, s_t) \text{ with amsgrad, else } s_t

    Without ``rectify``: :math:`u_t = (m_t / bc_1) / (\sqrt{\hat s_t} / \sqrt{bc_2} + \epsilon)`.
    With ``rectify`` (RAdam's rectification; :math:`\rho_\infty = 2/(1-\beta_2) - 1`,
    :math:`\rho_t = \rho_\infty - 2 t \beta_2^t / bc_2`):

    .. math::

        u_t = \begin{cases}
          r_t\, m_t / (\sqrt{s_t} + \epsilon) & \rho_t \ge 5, \quad
             r_t = \sqrt{bc_2 \frac{(\rho_t - 4)(\rho_t - 2)\rho_\infty}{(\rho_\infty - 4)(\rho_\infty - 2)\rho_t}} / bc_1 \\
          m_t / bc_1 & \rho_t < 5 \text{ and degenerated\_to\_sgd} \\
          0 & \text{otherwise}
        \end{cases}

    (the rectified branch uses :math:`s_t`, not the AMSGrad maximum, as timm does). The
    branch is chosen per leaf with ``torch.where`` on 0-d scalars.

    Args:
      b1: decay of the first moment, in [0, 1). Default 0.9.
      b2: decay of the belief, in [0, 1). Default 0.999.
      eps: :math:`\epsilon` >= 0, added to the belief every step and to the denominator.
        Default 1e-16 (timm's).
      amsgrad: divide by the running maximum of the belief (non-rectified form). Default False.
      rectify: RAdam's rectified update. Default True.
      degenerated_to_sgd: with ``rectify``, take SGD-with-momentum steps while
        :math:`\rho_t < 5` (else no step). Default True.
      state_dtype: dtype of the moments (default: the param's dtype, float32 for
        bf16/fp16 params, as timm).

    References:
      Zhuang et al., *AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed
      Gradients*, NeurIPS 2020, arXiv:2010.07468.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_belief(rectify=False)
      >>> u, state = tx.update(torch.tensor([2.0, -2.0]), tx.init(torch.zeros(2)))
      >>> u  # m/bc1 = g; s/bc2 = (g - 0.1 g)^2 * 0.001 / 0.001 = 0.81 g^2: u = g / (0.9 |g|)
      tensor([ 1.1111, -1.1111])
    """
    check_range("b1", b1, 0.0, 1.0)
    check_range("b2", b2, 0.0, 1.0)
    check_range("eps", eps, 0.0)
    for name, flag in (("amsgrad", amsgrad), ("rectify", rectify), ("degenerated_to_sgd", degenerated_to_sgd)):
        _check_bool(name, flag)

    def init_fn(params):
        def zeros(p):
            return None if p is None else torch.zeros_like(p, dtype=_timm_state_dtype(p, state_dtype))

        return ScaleByBeliefState(count=steps.leaf_counts(params), mu=tree_map(zeros, params),
                                  nu=tree_map(zeros, params), nu_max=tree_map(zeros, params) if amsgrad else None)

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        trees = dict(count=state.count, mu=state.mu, nu=state.nu)
        if amsgrad:
            trees["nu_max"] = state.nu_max
        sel = select(updates, **trees)
        if not sel.updates:
            return updates, state
        g = k.cast(sel.updates, [m.dtype for m in sel["mu"]])
        counts = steps.increment(sel["count"], donate=donate)

        def scalars(t):
            bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
            if not rectify:  # u = m * (1/bc1) / (sqrt(s) / sqrt(bc2) + eps)
                return 1 / bc1, bc2.sqrt(), 1.0, eps
            sma_max = 2 / (1 - b2) - 1
            sma = sma_max - 2 * t * b2 ** t / bc2
            adaptive = sma >= 5
            rho = torch.where(adaptive, sma, 6.0)  # keeps the root's argument (and its grad) finite
            step = (bc2 * (rho - 4) / (sma_max - 4) * (rho - 2) / rho * sma_max / (sma_max - 2)) ** 0.5 / bc1
            one = torch.ones_like(t)  # selections in t's (float64) dtype
            sgd = 1 / bc1 if degenerated_to_sgd else 0 * one
            # u = m * coef / (sqrt(s) * scale + shift)
            return (torch.where(adaptive, step, sgd), 1.0, torch.where(adaptive, one, 0 * one),
                    torch.where(adaptive, eps * one, one))

        coef, root_div, scale, shift = (k.scalars_for(s, g) for s in steps.per_leaf(scalars, counts, g))
        mu = k.lerp(sel["mu"], g, 1 - b1, donate=donate)
        resid = k.sub(g, mu)
        nu = k.mul(sel["nu"], b2, donate=donate)
        nu = k.addcmul(nu, resid, resid, 1 - b2, donate=True)
        nu = k.add(nu, eps, donate=True)
        nu_max = k.maximum(sel["nu_max"], nu, donate=donate) if amsgrad else None
        second = nu_max if (amsgrad and not rectify) else nu
        denom = k.sqrt(second)
        if rectify:
            denom = k.add(k.mul(denom, scale), shift)
        else:
            denom = k.add(k.div(denom, root_div), shift)
        out = k.div(k.mul(mu, coef), denom)
        out = k.cast(out, [x.dtype for x in sel.updates])  # bf16 params: computed in float32, returned in bf16
        new_state = ScaleByBeliefState(
            count=sel.rebuild(counts, "count"), mu=sel.rebuild(mu, "mu"), nu=sel.rebuild(nu, "nu"),
            nu_max=sel.rebuild(nu_max, "nu_max") if amsgrad else None)
        return sel.rebuild(out), new_state

    return mark_elementwise(GradientTransformation(init_fn, update_fn))


def scale_by_timm_adam(b1: float | torch.Tensor = 0.9, b2: float | torch.Tensor = 0.999,
                       eps: float | torch.Tensor = 1e-8, amsgrad: bool = False, *, nesterov: bool = False,
                       clipping_threshold: float | torch.Tensor | None = None) -> GradientTransformation:
    r"""Adam's step as timm's ``AdamWLegacy`` and ``AdamP`` compute it, with their options.

    With :math:`t` the leaf's own update count and :math:`bc_i = 1 - \beta_i^t`:

    .. math::

        m_t &= \operatorname{lerp}(m_{t-1}, g_t, 1 - \beta_1), \quad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        \hat v_t &= \max(\hat v_{t-1}, v_t) \text{ with amsgrad, else } v_t \\
        d_t &= \sqrt{\hat v_t} / \sqrt{bc_2} + \epsilon \\
        d_t &\leftarrow d_t \cdot \max\big(1, \operatorname{rms}(g_t / d_t) / \tau\big)
              \quad \text{with clipping\_threshold } \tau \text{ (StableAdamW)} \\
        n_t &= \beta_1 m_t + (1 - \beta_1) g_t \text{ with nesterov (AdamP's form), else } m_t \\
        u_t &= n_t / d_t / bc_1

    Without the options this is :func:`functional_optim.scale_by_adam` (up to rounding);
    ``nesterov`` here is AdamP's (not optax's NAdam form of ``scale_by_adam(nesterov=True)``).
    The RMS clip is a per-tensor reduction: the transform then declares ``Needs.PER_PARAM``.

    Args:
      b1: decay of the first moment, in [0, 1). Default 0.9.
      b2: decay of the second moment, in [0, 1). Default 0.999.
      eps: added to the denominator, >= 0. Default 1e-8.
      amsgrad: divide by the running maximum of the second moment. Default False.
      nesterov: AdamP's Nesterov numerator. Default False.
      clipping_threshold: :math:`\tau` > 0, or None (default) for no clipping.

    References:
      Kingma & Ba, *Adam: A Method for Stochastic Optimization*, 2014, arXiv:1412.6980;
      Wortsman et al., *Stable and low-precision training for large-scale vision-language
      models* (StableAdamW), 2023, arXiv:2304.13013.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_timm_adam(clipping_threshold=0.5)
      >>> u, _ = tx.update(torch.tensor([3.0, -3.0]), tx.init(torch.zeros(2)))
      >>> u  # rms(g / d) = 1 > 0.5: the step is halved
      tensor([ 0.5000, -0.5000])
    """
    check_range("b1", b1, 0.0, 1.0)
    check_range("b2", b2, 0.0, 1.0)
    check_range("eps", eps, 0.0)
    _check_bool("amsgrad", amsgrad)
    _check_bool("nesterov", nesterov)
    if clipping_threshold is not None:
        check_range("clipping_threshold", clipping_threshold, 0.0)
        if concrete(clipping_threshold) == 0.0:
            raise ValueError("Invalid clipping_threshold: 0.0 (expected clipping_threshold > 0, or None)")

    def init_fn(params):
        return ScaleByAdamState(count=steps.leaf_counts(params), mu=zeros_like(params), nu=zeros_like(params),
                                nu_max=zeros_like(params) if amsgrad else None)

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        trees = dict(count=state.count, mu=state.mu, nu=state.nu)
        if amsgrad:
            trees["nu_max"] = state.nu_max
        sel = select(updates, **trees)
        if not sel.updates:
            return updates, state
        g = sel.updates
        counts = steps.increment(sel["count"], donate=donate)
        bc1, bc2_sqrt = (k.scalars_for(s, g) for s in steps.per_leaf(
            lambda t: (1 - b1 ** t, (1 - b2 ** t).sqrt()), counts, g))
        mu = k.lerp(sel["mu"], g, 1 - b1, donate=donate)
        nu = k.mul(sel["nu"], b2, donate=donate)
        nu = k.addcmul(nu, g, g, 1 - b2, donate=True)
        nu_max = k.maximum(sel["nu_max"], nu, donate=donate) if amsgrad else None
        denom = k.add(k.div(k.sqrt(nu_max if amsgrad else nu), bc2_sqrt), eps)
        if clipping_threshold is not None:
            clip = k.clamp(k.div(k.rms(k.div(g, denom)), clipping_threshold), min=1.0)
            denom = k.mul(denom, clip)
        numer = k.add(k.mul(mu, b1), g, 1 - b1) if nesterov else mu
        out = k.div(k.div(numer, denom), bc1)
        new_state = ScaleByAdamState(count=sel.rebuild(counts, "count"), mu=sel.rebuild(mu, "mu"),
                                     nu=sel.rebuild(nu, "nu"),
                                     nu_max=sel.rebuild(nu_max, "nu_max") if amsgrad else None)
        return sel.rebuild(out), new_state

    tx = GradientTransformation(init_fn, update_fn)
    return declare(tx, Needs.PER_PARAM if clipping_threshold is not None else Needs.ELEMENTWISE)


def scale_by_nadam_legacy(b1: float | torch.Tensor = 0.9, b2: float | torch.Tensor = 0.999,
                          eps: float | torch.Tensor = 1e-8,
                          schedule_decay: float | torch.Tensor = 4e-3) -> GradientTransformation:
    r"""NAdam as ``timm.optim.NAdamLegacy`` (Dozat's warming momentum schedule).

    With :math:`t` the leaf's own update count, :math:`\psi` = ``schedule_decay``:

    .. math::

        \mu_t &= \beta_1 (1 - \tfrac12 \cdot 0.96^{t \psi}), \quad
        \mu_{t+1} = \beta_1 (1 - \tfrac12 \cdot 0.96^{(t+1) \psi}) \\
        M_t &= M_{t-1} \mu_t \quad (M_0 = 1, \text{ timm's } \texttt{m\_schedule}), \quad
        M_{t+1}' = M_t \mu_{t+1} \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \quad v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        d_t &= \sqrt{v_t} / \sqrt{1 - \beta_2^t} + \epsilon \\
        u_t &= \Big(\frac{1 - \mu_t}{1 - M_t} g_t + \frac{\mu_{t+1}}{1 - M_{t+1}'} m_t\Big) / d_t

    :math:`M_t` is kept in float64 (timm's Python float; torch.optim.NAdam's ``mu_product``
    is float32 and its denominator is ``sqrt(v / bc2) + eps``: use
    :func:`functional_optim.scale_by_nadam` for that one).

    Args:
      b1: :math:`\beta_1`, in [0, 1). Default 0.9.
      b2: :math:`\beta_2`, in [0, 1). Default 0.999.
      eps: added to the denominator, >= 0. Default 1e-8.
      schedule_decay: :math:`\psi` >= 0. Default 4e-3.

    References:
      Dozat, *Incorporating Nesterov Momentum into Adam*, ICLR 2016 workshop
      (http://cs229.stanford.edu/proj2015/054_report.pdf).

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_nadam_legacy()
      >>> u, state = tx.update(torch.tensor([1.0]), tx.init(torch.zeros(1)))
      >>> state.m_schedule.dtype, round(float(state.m_schedule), 6)
      (torch.float64, 0.450073)
    """
    check_range("b1", b1, 0.0, 1.0)
    check_range("b2", b2, 0.0, 1.0)
    check_range("eps", eps, 0.0)
    check_range("schedule_decay", schedule_decay, 0.0)

    def init_fn(params):
        return ScaleByNadamLegacyState(
            count=steps.leaf_counts(params),
            m_schedule=tree_map(lambda p: torch.ones((), dtype=k.scalar_dtype(p), device=p.device), params),
            mu=zeros_like(params), nu=zeros_like(params))

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        sel = select(updates, count=state.count, m_schedule=state.m_schedule, mu=state.mu, nu=state.nu)
        if not sel.updates:
            return updates, state
        g = sel.updates
        counts = steps.increment(sel["count"], donate=donate)
        schedules = sel["m_schedule"]

        def scalars(t, m_schedule):
            cache = b1 * (1.0 - 0.5 * 0.96 ** (t * schedule_decay))
            cache_next = b1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * schedule_decay))
            new = m_schedule * cache
            nxt = m_schedule * cache * cache_next
            return new, (1.0 - cache) / (1.0 - new), cache_next / (1.0 - nxt), (1 - b2 ** t).sqrt()

        new_schedules, coef_g, coef_m, bc2_sqrt = steps.per_leaf_with(scalars, counts, g, schedules)
        coef_g, coef_m, bc2_sqrt = (k.scalars_for(s, g) for s in (coef_g, coef_m, bc2_sqrt))
        mu = k.lerp(sel["mu"], g, 1 - b1, donate=donate)
        nu = k.mul(sel["nu"], b2, donate=donate)
        nu = k.addcmul(nu, g, g, 1 - b2, donate=True)
        denom = k.add(k.div(k.sqrt(nu), bc2_sqrt), eps)
        numer = k.add(k.mul(g, coef_g), mu, coef_m)
        out = k.div(numer, denom)
        new_state = ScaleByNadamLegacyState(
            count=sel.rebuild(counts, "count"),
            m_schedule=sel.rebuild([n.to(s.dtype) for n, s in zip(new_schedules, schedules)], "m_schedule"),
            mu=sel.rebuild(mu, "mu"), nu=sel.rebuild(nu, "nu"))
        return sel.rebuild(out), new_state

    return mark_elementwise(GradientTransformation(init_fn, update_fn))


def trace_from_zero(decay: float | torch.Tensor, dampening: float | torch.Tensor = 0.0,
                    nesterov: bool = False) -> GradientTransformation:
    r"""Heavy-ball momentum from a zero buffer, dampened on every step (timm's SGDP).

    .. math::

        b_t = \mu\, b_{t-1} + (1 - \tau)\, g_t, \quad b_0 = 0; \qquad
        u_t = g_t + \mu\, b_t \text{ with nesterov, else } b_t

    Unlike :func:`functional_optim.trace` (torch.optim.SGD's rule) the first step is
    dampened too, and dampening applies even when :math:`\mu = 0`. The state is a
    :class:`~functional_optim.TraceState`.

    Args:
      decay: :math:`\mu` >= 0.
      dampening: :math:`\tau`. Default 0.
      nesterov: Nesterov's form. Default False.

    References:
      Polyak, *Some methods of speeding up the convergence of iteration methods*, 1964;
      Heo et al., *AdamP: Slowing Down the Slowdown for Momentum Optimizers on
      Scale-invariant Weights*, ICLR 2021, arXiv:2006.08217.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.trace_from_zero(0.9, dampening=0.5)
      >>> u, state = tx.update(torch.ones(1), tx.init(torch.zeros(1)))
      >>> u, tx.update(torch.ones(1), state)[0]
      (tensor([0.5000]), tensor([0.9500]))
    """
    check_range("decay", decay, 0.0)
    check_range("dampening", dampening, None)
    _check_bool("nesterov", nesterov)

    def init_fn(params):
        return TraceState(trace=zeros_like(params), count=steps.leaf_counts(params))

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        sel = select(updates, trace=state.trace, count=state.count)
        if not sel.updates:
            return updates, state
        g = sel.updates
        buf = k.mul(sel["trace"], decay, donate=donate)
        buf = k.add(buf, g, 1 - dampening, donate=True)
        out = k.add(g, buf, decay) if nesterov else list(buf)
        counts = steps.increment(sel["count"], donate=donate)
        return sel.rebuild(out), TraceState(trace=sel.rebuild(buf, "trace"), count=sel.rebuild(counts, "count"))

    return mark_elementwise(GradientTransformation(init_fn, update_fn))
