"""``scale_by_laprop``: LaProp's normalise-then-momentum step, with timm's bias corrections."""

from __future__ import annotations

from typing import Any, NamedTuple

import optree
import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation, ScalarOrSchedule, mark_elementwise
from ..hyperparams import check_range, is_schedule, value_at
from ..tree import select, zeros_like

__all__ = ["ScaleByLapropState", "scale_by_laprop"]


class ScaleByLapropState(NamedTuple):
    """State of :func:`scale_by_laprop`."""

    count: Any  # tree of 0-d int32: updates each leaf has received (timm's `step`)
    mu: Any  # tree like params: momentum of the normalised, lr-scaled gradients (`exp_avg`)
    nu: Any  # tree like params: EMA of the squared gradients (`exp_avg_sq`)
    lr_avg: Any  # tree of 0-d float64 (per-step scalar dtype): EMA of the learning rates with b1,
    #              (1 - b1**t) * lr for a constant lr (`exp_avg_lr_1`)
    nu_correction: Any  # tree of 0-d, float32 (float64 when that is torch's default dtype, as timm):
    #                     EMA of 1 with b2, 1 - b2**t (`exp_avg_lr_2`)
    schedule_count: Any  # 0-d int32: updates so far, the lr schedule's argument (None without one)


def scale_by_laprop(learning_rate: ScalarOrSchedule, b1: float | torch.Tensor = 0.9,
                    b2: float | torch.Tensor = 0.999, eps: float | torch.Tensor = 1e-15) -> GradientTransformation:
    r"""LaProp's step as ``timm.optim.LaProp`` computes it: the gradient is normalised by its
    RMS first and the momentum averages the normalised, lr-scaled gradients.

    Per leaf, with :math:`\eta_t` the learning rate of this step, in the order computed:

    .. math::

        a_t &= \beta_1 a_{t-1} + (1 - \beta_1)\,\eta_t \qquad
        c_t = \beta_2 c_{t-1} + (1 - \beta_2) \\
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, g_t^2 \\
        m_t &= \beta_1 m_{t-1} + \eta_t (1 - \beta_1)\, g_t / (\sqrt{v_t / c_t} + \epsilon) \\
        u_t &= (\eta_t / a_t)\, m_t \quad (u_t = 0 \text{ where } a_t = 0)

    :math:`a_t` and :math:`c_t` are the bias corrections: :math:`c_t = 1 - \beta_2^t`, and
    :math:`a_t / \eta = 1 - \beta_1^t` for a constant lr. Because the lr enters the momentum,
    a changed lr reaches the update gradually, as in the paper. The output is the whole step
    (the lr included): chain ``fo.scale(-1.0)`` after it to descend. :math:`c_t` is kept
    in torch's per-param scalar dtype (float32 unless float64 is torch's default dtype),
    computed with timm's float32 roundings.

    Args:
      learning_rate: :math:`\eta` >= 0: a number, a 0-d tensor or a schedule (called with
        the number of updates so far).
      b1: decay of the momentum and of the lr average, in [0, 1). Default 0.9.
      b2: decay of the second moment, in [0, 1). Default 0.999.
      eps: :math:`\epsilon` >= 0, added to the RMS. Default 1e-15 (timm's).

    References:
      Ziyin, Wang & Ueda, *LaProp: Separating Momentum and Adaptivity in Adam*, 2020,
      arXiv:2002.04839.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_laprop(0.1)
      >>> u, state = tx.update(torch.tensor([3.0, -0.5, 0.0]), tx.init(torch.zeros(3)))
      >>> u  # the first step: lr * g / |g| (0 where g = 0)
      tensor([ 0.1000, -0.1000,  0.0000])
    """
    check_range("learning_rate", learning_rate, 0.0, schedule_ok=True)
    check_range("b1", b1, 0.0, 1.0)
    check_range("b2", b2, 0.0, 1.0)
    check_range("eps", eps, 0.0)
    scheduled = is_schedule(learning_rate)

    def init_fn(params):
        def scalars(dtype_of):
            return optree.tree_map(lambda p: None if p is None else torch.zeros((), dtype=dtype_of(p), device=p.device),
                                   params, none_is_leaf=True)

        torch_dtype = steps.torch_scalar_dtype()  # read now, as timm creates its state
        return ScaleByLapropState(
            count=steps.leaf_counts(params), mu=zeros_like(params), nu=zeros_like(params),
            lr_avg=scalars(k.scalar_dtype), nu_correction=scalars(lambda p: torch_dtype),
            schedule_count=steps.zero_count(steps.first_device(params)) if scheduled else None)

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        sel = select(updates, count=state.count, mu=state.mu, nu=state.nu, lr_avg=state.lr_avg,
                     nu_correction=state.nu_correction)
        sel.check_like_updates("mu", "nu")
        g = sel.updates
        if not g:
            return updates, state
        lr = value_at(learning_rate, state.schedule_count) if scheduled else learning_rate
        counts = steps.increment(sel["count"], donate=donate)
        # the per-leaf averages, as timm's Python doubles (lr_avg) and float32 tensors (c_t)
        lr_avg, step_size = k.leafwise(
            lambda a: _lr_average(a, b1, lr), sel["lr_avg"], dtype=[a.dtype for a in sel["lr_avg"]])
        correction = k.leafwise(lambda c: c * b2 + (1 - b2), sel["nu_correction"],
                                dtype=[c.dtype for c in sel["nu_correction"]])

        nu = k.mul(sel["nu"], b2, donate=donate)
        nu = k.addcmul(nu, g, g, 1 - b2, donate=True)
        denom = k.div(nu, k.scalars_for(correction, nu))
        denom = k.add(k.sqrt(denom, donate=True), eps, donate=True)
        normalised = k.div(g, denom, out=g if donate else None)  # g is not read again
        mu = k.mul(sel["mu"], b1, donate=donate)
        mu = k.add(mu, normalised, lr * (1 - b1), donate=True)
        out = k.mul(mu, k.scalars_for(step_size, mu), out=normalised if donate else None)

        new_state = ScaleByLapropState(
            count=sel.rebuild(counts, "count"), mu=sel.rebuild(mu, "mu"), nu=sel.rebuild(nu, "nu"),
            lr_avg=sel.rebuild(lr_avg, "lr_avg"), nu_correction=sel.rebuild(correction, "nu_correction"),
            schedule_count=state.schedule_count + 1 if scheduled else None)
        return sel.rebuild(out), new_state

    return mark_elementwise(GradientTransformation(init_fn, update_fn))


def _lr_average(avg: torch.Tensor, b1: Any, lr: Any) -> tuple[torch.Tensor, torch.Tensor]:
    # a_t = b1 a + (1 - b1) lr, and the step size lr / a_t, 0 where a_t = 0 (lr 0 so far),
    # without a host read (the safe divisor keeps the unused branch and its derivative finite)
    avg = avg * b1 + (1 - b1) * lr
    nonzero = avg != 0
    safe = torch.where(nonzero, avg, torch.ones_like(avg))
    return avg, torch.where(nonzero, lr / safe, torch.zeros_like(avg))
