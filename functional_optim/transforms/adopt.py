"""``scale_by_adopt``: ADOPT's normalise-then-momentum step with its clip schedule (timm's
``Adopt``). The alias is :func:`functional_optim.timm.adopt` (:mod:`functional_optim.aliases.timm_adopt`)."""

from __future__ import annotations

import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation, Needs, declare
from ..hyperparams import check_range
from ..tree import select, zeros_like
from ..wrappers.caution import caution_mask
from .adaptive import ScaleByAdamState

__all__ = ["scale_by_adopt"]


def scale_by_adopt(b1: float | torch.Tensor = 0.9, b2: float | torch.Tensor = 0.9999,
                   eps: float | torch.Tensor = 1e-6, clip_exp: float | torch.Tensor | None = 0.333, *,
                   caution: bool = False, weight_decay: float | torch.Tensor = 0.0) -> GradientTransformation:
    r"""Scale updates by ADOPT: normalise the gradient by the *previous* second moment, then
    take momentum of the normalised gradient (as ``timm.optim.Adopt`` computes it).

    With :math:`t` the leaf's own update count, per leaf, in the order computed:

    * :math:`t = 1`: :math:`v_1 = v_0 + g_1^2` and the update is 0 (the first gradient only
      initialises the second moment);
    * :math:`t > 1`:

    .. math::

        d_t &= \max(\sqrt{v_{t-1}}, \epsilon) \\
        n_t &= \operatorname{clip}\big(g_t / d_t,\ -(t-1)^{c},\ (t-1)^{c}\big)
              \quad (\text{no clip when } c = \texttt{clip\_exp} \text{ is None}) \\
        m_t &= \operatorname{lerp}(m_{t-1}, n_t, 1 - \beta_1) \\
        u_t &= m_t \phi_t + \lambda p, \quad \phi_t = \text{caution mask of } m_t
              \text{ against } g_t \text{ (with caution, else 1)} \\
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2) g_t^2

    The weight term :math:`\lambda p` is decoupled weight decay expressed before the
    learning rate (``-lr * u`` then decays the params by :math:`\eta\lambda`), skipped at a
    leaf's first update as timm skips it; for timm's corrected decay pass
    :math:`\lambda \eta / \eta_{\max}`. Coupled (L2) decay goes before this transform
    (:func:`~functional_optim.add_decayed_weights`); see :func:`functional_optim.timm.adopt`.
    The branches are chosen per leaf with ``torch.where``: no host sync.

    Args:
      b1: :math:`\beta_1` in [0, 1), momentum of the normalised gradient. Default 0.9.
      b2: :math:`\beta_2` in [0, 1), decay of the second moment. Default 0.9999.
      eps: :math:`\epsilon` >= 0, the floor of :math:`\sqrt{v}`. Default 1e-6.
      clip_exp: :math:`c` >= 0, the exponent of the clip bound :math:`(t-1)^c`, or None for
        no clipping. Default 0.333.
      caution: Cautious Optimizers' mask on the momentum (not on the decay). Default False.
      weight_decay: :math:`\lambda` >= 0, the decoupled decay coefficient. Default 0.

    References:
      Taniguchi et al., *ADOPT: Modified Adam Can Converge with Any beta_2 with the Optimal
      Rate*, NeurIPS 2024, arXiv:2411.02853; Liang et al., *Cautious Optimizers*, 2024,
      arXiv:2411.16085.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_adopt(clip_exp=None)
      >>> u, state = tx.update(torch.tensor([2.0, -4.0]), tx.init(torch.zeros(2)))
      >>> u, state.nu  # the first gradient only sets v
      (tensor([0., 0.]), tensor([ 4., 16.]))
      >>> tx.update(torch.tensor([2.0, -4.0]), state)[0]  # (1 - b1) * g / sqrt(v)
      tensor([ 0.1000, -0.1000])
    """
    check_range("b1", b1, 0.0, 1.0)
    check_range("b2", b2, 0.0, 1.0)
    check_range("eps", eps, 0.0)
    if clip_exp is not None:
        check_range("clip_exp", clip_exp, 0.0)
    check_range("weight_decay", weight_decay, 0.0)
    if not isinstance(caution, bool):
        raise TypeError(f"caution must be a bool, got {type(caution).__name__}")
    decay = isinstance(weight_decay, torch.Tensor) or weight_decay != 0

    def init_fn(params):
        return ScaleByAdamState(count=steps.leaf_counts(params), mu=zeros_like(params), nu=zeros_like(params),
                                nu_max=None)

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del extra
        trees = dict(count=state.count, mu=state.mu, nu=state.nu)
        if decay:
            if params is None:
                raise ValueError("scale_by_adopt with weight_decay needs params: call update(updates, state, params)")
            trees["params"] = params
        sel = select(updates, **trees)
        g = sel.updates
        if not g:
            return updates, state
        counts = steps.increment(sel["count"], donate=donate)
        later = [c != 1 for c in counts]
        nu = sel["nu"]
        normed = k.div(g, k.clamp(k.sqrt(nu), min=eps))
        if clip_exp is not None:
            bound = k.scalars_for(steps.per_leaf(lambda t: (t - 1) ** clip_exp, counts, g), g)
            normed = k.clamp(normed, min=[-b for b in bound], max=bound, donate=True)
        mu = k.lerp(sel["mu"], normed, 1 - b1)
        out = k.mul(mu, caution_mask(mu, g)) if caution else list(mu)
        if decay:
            out = k.add(out, sel["params"], weight_decay, donate=caution)
        # a leaf's first gradient: v += g^2 (timm's addcmul into the zero moment), else the EMA
        nu_next = k.where(later, k.addcmul(k.mul(nu, b2), g, g, 1 - b2), k.addcmul(nu, g, g))
        mu = k.where(later, mu, sel["mu"])
        out = k.where(later, out, 0.0)
        new_state = ScaleByAdamState(count=sel.rebuild(counts, "count"), mu=sel.rebuild(mu, "mu"),
                                     nu=sel.rebuild(nu_next, "nu"), nu_max=None)
        return sel.rebuild(out), new_state

    return declare(GradientTransformation(init_fn, update_fn), Needs.PER_PARAM if caution else Needs.ELEMENTWISE)
