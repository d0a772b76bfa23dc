"""``mars_gradient_correction``: MARS's variance-reduced gradient, clipped to a norm."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation, Needs, declare
from ..hyperparams import check_number, check_range, concrete
from ..tree import select, zeros_like

__all__ = ["MarsGradientCorrectionState", "mars_gradient_correction"]


class MarsGradientCorrectionState(NamedTuple):
    """State of :func:`mars_gradient_correction`."""

    count: Any  # tree of 0-d int32: updates each leaf has received (timm's `step`)
    last_grad: Any  # tree like params: the previous gradient (timm's `last_grad`), zero before the first


def mars_gradient_correction(gamma: float | torch.Tensor = 0.025, b1: float | torch.Tensor = 0.9,
                             max_norm: float | torch.Tensor | None = 1.0) -> GradientTransformation:
    r"""Replace each gradient by MARS's variance-reduced gradient, clipped to ``max_norm``.

    Per leaf, with :math:`t` the leaf's own update count, in the order computed:

    .. math::

        c_t &= g_t + \gamma\,\frac{\beta_1}{1 - \beta_1}\,(g_t - g_{t-1})
              \quad (c_1 = g_1\text{: no previous gradient, as timm}) \\
        c_t &\leftarrow c_t / \max\big(1, \lVert c_t \rVert_2 / \tau\big) \quad (\tau = \text{max\_norm}) \\
        g_{t-1} &\leftarrow g_t \quad (\text{stored})

    (MARS's approximate form, "MARS-AdamW"/"MARS-Lion" with :math:`\nabla f(x_{t-1},
    \xi_t) \approx g_{t-1}`.) Chain the moments after it (:func:`~functional_optim.scale_by_timm_adam`,
    or :func:`~functional_optim.ema` and :func:`~functional_optim.scale_by_sign`).
    The norm is per tensor: the transform declares ``Needs.PER_PARAM`` (elementwise without
    ``max_norm``). ``gamma=0, max_norm=None`` passes the gradient through and only records it
    (the state timm keeps for the params of its AdamW fallback).

    Args:
      gamma: :math:`\gamma`, the weight of the gradient difference. Default 0.025.
      b1: :math:`\beta_1` in [0, 1), the momentum decay the correction is scaled for. Default 0.9.
      max_norm: :math:`\tau` > 0, or None for no clipping. Default 1.0 (timm's unit norm).

    References:
      Yuan et al., *MARS: Unleashing the Power of Variance Reduction for Training Large
      Models*, 2024, arXiv:2411.10438.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.mars_gradient_correction(gamma=0.1, b1=0.5, max_norm=None)
      >>> state = tx.init(torch.zeros(2))
      >>> c, state = tx.update(torch.tensor([1.0, 2.0]), state)  # the first step: c = g
      >>> tx.update(torch.tensor([3.0, 2.0]), state)[0]  # g + 0.1 * (g - g_prev)
      tensor([3.2000, 2.0000])
    """
    check_number("gamma", gamma)
    check_range("b1", b1, 0.0, 1.0)
    if max_norm is not None:
        check_range("max_norm", max_norm, 0.0)
        if concrete(max_norm) == 0.0:
            raise ValueError("Invalid max_norm: 0.0 (expected max_norm > 0, or None)")
    record_only = not isinstance(gamma, torch.Tensor) and gamma == 0 and max_norm is None

    def init_fn(params):
        return MarsGradientCorrectionState(count=steps.leaf_counts(params), last_grad=zeros_like(params))

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        sel = select(updates, count=state.count, last_grad=state.last_grad)
        sel.check_like_updates("last_grad")
        g = sel.updates
        if not g:
            return updates, state
        counts = steps.increment(sel["count"], donate=donate)
        if record_only:
            c = g
        else:
            # the weight is 0 at a leaf's first update: c = (g - 0) * 0 + g = g
            weight = k.scalars_for(steps.per_leaf(
                lambda t: (t != 1).to(t.dtype) * (gamma * (b1 / (1 - b1))), counts, g), g)
            c = k.add(k.mul(k.sub(g, sel["last_grad"]), weight, donate=True), g, donate=True)
            if max_norm is not None:
                divisor = k.leafwise(lambda n: (n / max_norm).clamp(min=1.0), k.norms(c))
                c = k.div(c, k.scalars_for(divisor, c), donate=True)
        # the gradient is copied, never aliased: a caller may reuse g's buffer (and the
        # user's zero_grad(set_to_none=False) zeroes p.grad in place)
        last = k.copy(sel["last_grad"], g) if donate else [x.clone() for x in g]
        new_state = MarsGradientCorrectionState(count=sel.rebuild(counts, "count"),
                                                last_grad=sel.rebuild(last, "last_grad"))
        return sel.rebuild(c), new_state

    tx = GradientTransformation(init_fn, update_fn)
    return declare(tx, Needs.ELEMENTWISE if max_norm is None else Needs.PER_PARAM)
