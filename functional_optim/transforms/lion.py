"""``scale_by_lion``: Lion's sign of an interpolated momentum (timm's and optax's Lion)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation, mark_elementwise
from ..hyperparams import check_range
from ..tree import select, zeros_like

__all__ = ["ScaleByLionState", "scale_by_lion"]


class ScaleByLionState(NamedTuple):
    """State of :func:`scale_by_lion`."""

    count: Any  # tree of 0-d int32: updates each leaf has received (timm creates `exp_avg` at the first)
    mu: Any  # tree like params (mu_dtype if given): the momentum, an EMA of the gradients (timm's `exp_avg`)


def scale_by_lion(b1: float | torch.Tensor = 0.9, b2: float | torch.Tensor = 0.99,
                  mu_dtype: torch.dtype | None = None) -> GradientTransformation:
    r"""Replace each update by the sign of Lion's interpolated momentum.

    Per leaf, in the order computed (``lerp`` with torch's rounding, as timm's Lion):

    .. math::

        u_t &= \operatorname{sign}\big(\operatorname{lerp}(m_{t-1}, g_t, 1 - \beta_1)\big) \\
        m_t &= \operatorname{lerp}(m_{t-1}, g_t, 1 - \beta_2)

    The update interpolates with :math:`\beta_1` and the stored momentum decays with
    :math:`\beta_2`: two different averages of the same history. Every entry of the output
    is -1, 0 or 1 (per real/imaginary component for complex params); chain
    :func:`~functional_optim.scale_by_learning_rate` after it. The sign has derivative 0
    almost everywhere: derivatives flow into the next steps through :math:`m`.

    Args:
      b1: interpolation weight of the update's momentum, in [0, 1). Default 0.9.
      b2: decay of the stored momentum, in [0, 1). Default 0.99.
      mu_dtype: dtype of the momentum (default: the param's dtype).

    References:
      Chen et al., *Symbolic Discovery of Optimization Algorithms*, 2023, arXiv:2302.06675.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_lion()
      >>> state = tx.init(torch.zeros(3))
      >>> u, state = tx.update(torch.tensor([0.5, 0.0, -2.0]), state)
      >>> u, state.mu  # m = 0.01 g
      (tensor([ 1.,  0., -1.]), tensor([ 0.0050,  0.0000, -0.0200]))
    """
    check_range("b1", b1, 0.0, 1.0)
    check_range("b2", b2, 0.0, 1.0)

    def init_fn(params):
        return ScaleByLionState(count=steps.leaf_counts(params), mu=zeros_like(params, mu_dtype))

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        sel = select(updates, count=state.count, mu=state.mu)
        sel.check_like_updates("mu", dtypes=dict(mu=mu_dtype))
        if not sel.updates:
            return updates, state
        g = k.cast(sel.updates, [m.dtype for m in sel["mu"]])
        interpolated = k.lerp(sel["mu"], g, 1 - b1)  # read before the momentum is overwritten
        mu = k.lerp(sel["mu"], g, 1 - b2, donate=donate)
        out = k.sign(interpolated, donate=True)  # the interpolation is ours: a fresh buffer
        out = k.cast(out, [x.dtype for x in sel.updates])
        counts = steps.increment(sel["count"], donate=donate)
        return sel.rebuild(out), ScaleByLionState(count=sel.rebuild(counts, "count"), mu=sel.rebuild(mu, "mu"))

    return mark_elementwise(GradientTransformation(init_fn, update_fn))
