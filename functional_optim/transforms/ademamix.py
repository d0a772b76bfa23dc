"""``scale_by_ademamix``: AdEMAMix's mixture of a fast and a slow gradient EMA
(bitsandbytes' ``AdEMAMix``, with its alpha and beta3 warm-up schedulers)."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation, mark_elementwise
from ..hyperparams import check_range
from ..tree import select, zeros_like

__all__ = ["ScaleByAdemamixState", "scale_by_ademamix"]


class ScaleByAdemamixState(NamedTuple):
    """State of :func:`scale_by_ademamix`."""

    count: Any  # tree of 0-d int32: updates each leaf has received (bitsandbytes' `step`)
    mu: Any  # tree like params (mu_dtype if given): the fast EMA m1, decay b1 (`state1[0]`)
    mu_slow: Any  # tree like params (mu_dtype if given): the slow EMA m2, decay b3 (`state1[1]`)
    nu: Any  # tree like params (mu_dtype if given): the second moment, decay b2 (`state2`)


def _check_period(name: str, value: Any) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise ValueError(f"Invalid {name}: {value!r} (expected None or an int >= 0)")


def scale_by_ademamix(b1: float | torch.Tensor = 0.9, b2: float | torch.Tensor = 0.999,
                      b3: float | torch.Tensor = 0.9999, alpha: float | torch.Tensor = 5.0,
                      eps: float | torch.Tensor = 1e-8, t_alpha: Optional[int] = None,
                      t_beta3: Optional[int] = None, *,
                      mu_dtype: torch.dtype | None = None) -> GradientTransformation:
    r"""Scale updates by AdEMAMix's mixture of two momenta, as bitsandbytes computes it.

    With :math:`t` the leaf's own update count, in the order computed:

    .. math::

        \alpha_t &= \min(t\alpha / T_\alpha, \alpha) \text{ with } T_\alpha \text{, else } \alpha \\
        \beta_{3,t} &= \min\Big(\exp\Big(\frac{\ln\beta_1 \ln\beta_3}
            {(1 - t/T_{\beta_3}) \ln\beta_3 + (t/T_{\beta_3}) \ln\beta_1}\Big), \beta_3\Big)
            \text{ with } T_{\beta_3} \text{, else } \beta_3 \\
        m_1 &\leftarrow \beta_1 m_1 + (1 - \beta_1) g \\
        m_2 &\leftarrow \beta_{3,t} m_2 + (1 - \beta_{3,t}) g \\
        \nu &\leftarrow \beta_2 \nu + (1 - \beta_2) g^2 \\
        u &= \frac{m_1 / (1 - \beta_1^t) + \alpha_t m_2}{\sqrt{\nu} / \sqrt{1 - \beta_2^t} + \epsilon}

    The slow EMA :math:`m_2` has no bias correction (the paper's choice). A period of
    ``None`` or 0 turns its scheduler off (as in bitsandbytes). Chain
    :func:`~functional_optim.add_decayed_weights` and
    :func:`~functional_optim.scale_by_learning_rate` after it for bitsandbytes' decoupled
    decay and step (``fo.bitsandbytes.ademamix``).

    Args:
      b1: decay of the fast EMA, in [0, 1). Default 0.9.
      b2: decay of the second moment, in [0, 1). Default 0.999.
      b3: decay of the slow EMA, in [0, 1). Default 0.9999.
      alpha: weight of the slow EMA, >= 0. Default 5.0.
      eps: added to the denominator, >= 0. Default 1e-8.
      t_alpha: warm-up period of :math:`\alpha` (int), or None (default).
      t_beta3: warm-up period of :math:`\beta_3` (int), or None (default).
      mu_dtype: dtype of the three moments (default: the param's dtype).

    References:
      Pagliardini, Ablin & Grangier, *The AdEMAMix Optimizer: Better, Faster, Older*,
      2024, arXiv:2409.03137.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_ademamix(alpha=5.0)
      >>> u, state = tx.update(torch.tensor([1.0, -2.0]), tx.init(torch.zeros(2)))
      >>> u  # (g + 5 * 1e-4 g) / (|g| + eps)
      tensor([ 1.0005, -1.0005])
    """
    for name, value in (("b1", b1), ("b2", b2), ("b3", b3)):
        check_range(name, value, 0.0, 1.0)
    check_range("alpha", alpha, 0.0)
    check_range("eps", eps, 0.0)
    _check_period("t_alpha", t_alpha)
    _check_period("t_beta3", t_beta3)

    def init_fn(params):
        return ScaleByAdemamixState(count=steps.leaf_counts(params), mu=zeros_like(params, mu_dtype),
                                    mu_slow=zeros_like(params, mu_dtype), nu=zeros_like(params, mu_dtype))

    def scalars(t):
        one = torch.ones_like(t)
        bc1 = 1 - b1 ** t
        bc2_root = (1 - b2 ** t).sqrt()
        alpha_t = torch.minimum(t * alpha / t_alpha, alpha * one) if t_alpha else alpha * one
        if t_beta3:
            ln1, ln3 = torch.log(b1 * one), torch.log(b3 * one)
            frac = t / t_beta3
            beta3_t = torch.minimum(torch.exp(ln1 * ln3 / ((1 - frac) * ln3 + frac * ln1)), b3 * one)
        else:
            beta3_t = b3 * one
        return bc1, bc2_root, alpha_t, beta3_t, 1 - beta3_t

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        sel = select(updates, count=state.count, mu=state.mu, mu_slow=state.mu_slow, nu=state.nu)
        if not sel.updates:
            return updates, state
        g = k.cast(sel.updates, [m.dtype for m in sel["mu"]])
        counts = steps.increment(sel["count"], donate=donate)
        bc1, bc2_root, alpha_t, beta3_t, one_minus_b3 = (
            k.scalars_for(s, g) for s in steps.per_leaf(scalars, counts, g))
        mu = k.add(k.mul(sel["mu"], b1, donate=donate), g, 1 - b1, donate=True)
        mu_slow = k.add(k.mul(sel["mu_slow"], beta3_t, donate=donate), k.mul(g, one_minus_b3), donate=True)
        nu = k.addcmul(k.mul(sel["nu"], b2, donate=donate), g, g, 1 - b2, donate=True)
        num = k.add(k.div(mu, bc1), k.mul(mu_slow, alpha_t), donate=True)
        den = k.add(k.div(k.sqrt(nu), bc2_root, donate=True), eps, donate=True)
        out = k.cast(k.div(num, den, donate=True), [x.dtype for x in sel.updates])
        new_state = ScaleByAdemamixState(count=sel.rebuild(counts, "count"), mu=sel.rebuild(mu, "mu"),
                                         mu_slow=sel.rebuild(mu_slow, "mu_slow"), nu=sel.rebuild(nu, "nu"))
        return sel.rebuild(out), new_state

    return mark_elementwise(GradientTransformation(init_fn, update_fn))
