"""``scale_by_adan``: Adan's three moments and its Nesterov-style step (timm's ``Adan``).
The alias is :func:`functional_optim.timm.adan` (:mod:`functional_optim.aliases.timm_adan`)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation, Needs, declare
from ..hyperparams import check_range
from ..tree import select, zeros_like
from ..wrappers.caution import caution_mask

__all__ = ["ScaleByAdanState", "scale_by_adan"]


class ScaleByAdanState(NamedTuple):
    """State of :func:`scale_by_adan`."""

    count: torch.Tensor  # 0-d int32: updates applied so far (timm's per-group ``step``)
    leaf_count: Any  # tree of 0-d int32: updates each leaf has received (0: timm has no state for it yet)
    mu: Any  # tree like params: EMA of the gradient (timm's ``exp_avg``)
    nu: Any  # tree like params: EMA of the squared Nesterov gradient (``exp_avg_sq``)
    delta: Any  # tree like params: EMA of the gradient difference (``exp_avg_diff``)
    neg_prev_grad: Any  # tree like params: minus the leaf's last gradient (``neg_pre_grad``)


def _betas(b1: Any, b2: Any, b3: Any) -> None:
    for name, beta in (("b1", b1), ("b2", b2), ("b3", b3)):
        check_range(name, beta, 0.0, 1.0)


def scale_by_adan(b1: float | torch.Tensor = 0.98, b2: float | torch.Tensor = 0.92,
                  b3: float | torch.Tensor = 0.99, eps: float | torch.Tensor = 1e-8, *,
                  caution: bool = False) -> GradientTransformation:
    r"""Scale updates by Adan's adaptive Nesterov estimate, as ``timm.optim.Adan`` computes it.

    With :math:`t` the number of updates so far (one counter for the whole tree, timm's
    per-group ``step``), :math:`bc_i = 1 - \beta_i^t`, and per leaf, in the order computed:

    .. math::

        \Delta_t &= (g_t - g_{t-1})\,\kappa, \quad \kappa = 0 \text{ at the leaf's first update (or } t = 1)
              \text{, else } 1 \\
        m_t &= \operatorname{lerp}(m_{t-1}, g_t, 1 - \beta_1) \\
        \delta_t &= \beta_2 \delta_{t-1} + (1 - \beta_2) \Delta_t \\
        z_t &= \beta_2 \Delta_t + g_t \\
        n_t &= \beta_3 n_{t-1} + (1 - \beta_3) z_t^2 \\
        d_t &= \sqrt{n_t} / \sqrt{bc_3} + \epsilon \\
        \phi_t &= \text{caution mask of } m_t \text{ against } g_t \text{ (with caution, else 1)} \\
        u_t &= (m_t \phi_t / bc_1) / d_t + (\beta_2 / bc_2)\, \delta_t / d_t

    timm's betas are the paper's :math:`1 - \beta` (its defaults 0.98, 0.92, 0.99 are the
    paper's 0.02, 0.08, 0.01). The caution mask (:func:`~functional_optim.wrappers.caution.caution_mask`)
    applies to the first-moment term only, as timm does, so caution is an option here and
    not the :func:`~functional_optim.cautious` wrapper. Follow with
    :func:`~functional_optim.scale_by_learning_rate` and a decay
    (:func:`~functional_optim.add_decoupled_weight_decay` or
    :func:`~functional_optim.add_proximal_weight_decay`): :func:`functional_optim.timm.adan`.
    The step counter advances on every call, even when every gradient is None (timm counts
    a param group's step that way); a leaf's own count says whether it has had a gradient.

    Args:
      b1: :math:`\beta_1` in [0, 1), decay of the gradient average. Default 0.98.
      b2: :math:`\beta_2` in [0, 1), decay of the gradient-difference average. Default 0.92.
      b3: :math:`\beta_3` in [0, 1), decay of the second moment. Default 0.99.
      eps: :math:`\epsilon` >= 0, added to the denominator. Default 1e-8.
      caution: Cautious Optimizers' mask on the first-moment term. Default False.

    References:
      Xie et al., *Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep
      Models*, 2022, arXiv:2208.06677; Liang et al., *Cautious Optimizers*, 2024, arXiv:2411.16085.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_adan()
      >>> u, state = tx.update(torch.tensor([2.0, -2.0]), tx.init(torch.zeros(2)))
      >>> u  # step 1: Delta = 0, m / bc1 = g, sqrt(n / bc3) = |g|: u = sign(g)
      tensor([ 1., -1.])
      >>> u, state = tx.update(torch.tensor([2.0, -2.0]), state)
      >>> u, state.count
      (tensor([ 1., -1.]), tensor(2, dtype=torch.int32))
    """
    _betas(b1, b2, b3)
    check_range("eps", eps, 0.0)
    if not isinstance(caution, bool):
        raise TypeError(f"caution must be a bool, got {type(caution).__name__}")

    def init_fn(params):
        return ScaleByAdanState(count=steps.zero_count(steps.first_device(params)),
                                leaf_count=steps.leaf_counts(params), mu=zeros_like(params), nu=zeros_like(params),
                                delta=zeros_like(params), neg_prev_grad=zeros_like(params))

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        sel = select(updates, leaf_count=state.leaf_count, mu=state.mu, nu=state.nu, delta=state.delta,
                     neg_prev_grad=state.neg_prev_grad)
        count = state.count + 1
        g = sel.updates
        if not g:
            return updates, state._replace(count=count)
        def scalars(t, leaf_t):
            # keep = 0 starts a leaf's difference afresh: at its first gradient and at the
            # group's step 1 (timm resets neg_pre_grad to -g then, so g - g_prev = 0)
            keep = ((leaf_t != 0) & (t != 1)).to(t.dtype)
            return keep, 1 / (1 - b1 ** t), b2 / (1 - b2 ** t), (1 - b3 ** t).sqrt()

        keep, inv_bc1, ratio2, root_bc3 = (k.scalars_for(s, g) for s in steps.per_leaf_with(
            scalars, [count] * len(g), g, sel["leaf_count"]))
        diff = k.mul(k.add(sel["neg_prev_grad"], g), keep)
        mu = k.lerp(sel["mu"], g, 1 - b1, donate=donate)
        delta = k.add(k.mul(sel["delta"], b2, donate=donate), diff, 1 - b2, donate=True)
        nesterov = k.add(k.mul(diff, b2, donate=True), g, donate=True)  # diff is ours (a fresh where)
        nu = k.mul(sel["nu"], b3, donate=donate)
        nu = k.addcmul(nu, nesterov, nesterov, 1 - b3, donate=True)
        denom = k.add(k.div(k.sqrt(nu), root_bc3), eps, donate=True)
        first = k.mul(mu, caution_mask(mu, g)) if caution else mu
        out = k.add(k.scaled_div(first, denom, inv_bc1), k.scaled_div(delta, denom, ratio2), donate=True)
        neg_prev = k.neg(g)
        new_state = ScaleByAdanState(
            count=count, leaf_count=sel.rebuild(steps.increment(sel["leaf_count"], donate=donate), "leaf_count"),
            mu=sel.rebuild(mu, "mu"), nu=sel.rebuild(nu, "nu"), delta=sel.rebuild(delta, "delta"),
            neg_prev_grad=sel.rebuild(neg_prev, "neg_prev_grad"))
        return sel.rebuild(out), new_state

    return declare(GradientTransformation(init_fn, update_fn), Needs.PER_PARAM if caution else Needs.ELEMENTWISE)
