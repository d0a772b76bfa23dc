"""AdaHessian's preconditioning: Adam's first moment divided by a power of a moving
average of the squared Hessian-diagonal estimate, which the caller passes in."""

from __future__ import annotations

from typing import Any, NamedTuple

import optree
import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation, Needs, declare
from ..hyperparams import check_range
from ..tree import select


class ScaleByAdahessianState(NamedTuple):
    """State of :func:`scale_by_adahessian` (timm's per-param keys in brackets)."""

    count: Any  # tree of 0-d int32: updates each leaf has received [step, "hessian step"]
    mu: Any  # tree like params: first moment of the gradient [exp_avg]
    nu: Any  # tree like params: moving average of the squared Hessian diagonal [exp_hessian_diag_sq]
    hess: Any  # tree like params: the Hessian-diagonal estimate in use (timm keeps it as ``p.hess``)
    hess_count: Any  # tree of 0-d int32: how many estimates the leaf has taken (0: none yet)


def _check_update_each(update_each: Any) -> None:
    if isinstance(update_each, bool) or not isinstance(update_each, int) or update_each < 1:
        raise ValueError(f"update_each must be an int >= 1, got {update_each!r}")


def scale_by_adahessian(b1: float | torch.Tensor = 0.9, b2: float | torch.Tensor = 0.999,
                        eps: float | torch.Tensor = 1e-8, hessian_power: float | torch.Tensor = 1.0,
                        update_each: int = 1, avg_conv_kernel: bool = False) -> GradientTransformation:
    r"""AdaHessian's direction, with ``timm.optim.Adahessian``'s numerics; the Hessian-diagonal
    estimate comes in as the keyword argument ``hessian`` of ``update`` (a tree like the
    updates, e.g. Hutchinson's :math:`z \odot (H z)` averaged over Rademacher vectors
    :math:`z`).

    ``update(grads, state, params, hessian=h)``; ``hessian`` is required (ValueError
    otherwise). Per leaf at its step :math:`t` (from 1), with :math:`g` its update:

    .. math::

        D &= h \text{ if } (t - 1) \bmod \texttt{update\_each} = 0
             \text{ or no estimate was taken yet, else } D_{prev} \\
        D &\leftarrow \mathrm{mean}_{\text{kernel}}(|D|) \text{ broadcast back
             (4-D leaves, with avg\_conv\_kernel)} \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) D^2 \\
        u &= \frac{m_t}{\big(v_t / (1 - \beta_2^t)\big)^{k/2} + \epsilon} \Big/ (1 - \beta_1^t)

    with :math:`k` the Hessian power. On steps that do not refresh the estimate, the
    ``hessian`` passed is ignored (any tree of the right structure will do). :math:`D` is
    kept in state (timm keeps it on the param as ``p.hess``). The power has derivative 0
    where :math:`v` is exactly 0 (:func:`functional_optim.kernels.power`).

    Declares ``Needs.MATRIX`` with ``avg_conv_kernel`` (kernel averages), else
    ``Needs.LEAVES``: the ``hessian`` argument arrives per param, which the adapter's flat
    buffers do not repack.

    Args:
      b1: :math:`\beta_1` in [0, 1). Default 0.9.
      b2: :math:`\beta_2` in [0, 1). Default 0.999.
      eps: :math:`\epsilon` >= 0, added to the power. Default 1e-8.
      hessian_power: :math:`k` in [0, 1]. Default 1.
      update_each: take a new estimate every this many steps of a leaf. Default 1.
      avg_conv_kernel: average :math:`|D|` over the kernel dims (2, 3) of 4-D params. Default False.

    References:
      Yao et al., *ADAHESSIAN: An Adaptive Second Order Optimizer for Machine Learning*,
      2020, arXiv:2006.00719.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_adahessian(b1=0.0, b2=0.0, eps=0.0)
      >>> g = {"w": torch.tensor([1.0, -2.0])}
      >>> u, _ = tx.update(g, tx.init(g), hessian={"w": torch.tensor([4.0, -0.5])})
      >>> u["w"]  # g / |D|
      tensor([ 0.2500, -4.0000])
    """
    check_range("betas[0]", b1, 0.0, 1.0)
    check_range("betas[1]", b2, 0.0, 1.0)
    check_range("eps", eps, 0.0)
    check_range("hessian_power", hessian_power, 0.0, 1.0, high_inclusive=True)
    _check_update_each(update_each)
    if not isinstance(avg_conv_kernel, bool):
        raise TypeError(f"avg_conv_kernel must be a bool, got {type(avg_conv_kernel).__name__}")

    def init_fn(params):
        def zeros(p):
            return None if p is None else torch.zeros_like(p)

        def tmap(f):
            return optree.tree_map(f, params, none_is_leaf=True)

        return ScaleByAdahessianState(count=steps.leaf_counts(params), mu=tmap(zeros), nu=tmap(zeros),
                                      hess=tmap(zeros), hess_count=steps.leaf_counts(params))

    def update_fn(updates, state, params=None, *, donate=False, hessian=None, **extra):
        del params, extra
        if hessian is None:
            raise ValueError("scale_by_adahessian needs the keyword argument hessian (the Hessian-diagonal "
                             "estimate, a tree like the updates): update(grads, state, params, hessian=...)")
        sel = select(updates, count=state.count, mu=state.mu, nu=state.nu, hess=state.hess,
                     hess_count=state.hess_count, hessian=hessian)
        g = sel.updates
        if not g:
            return updates, state
        old = sel["count"]
        hc = sel["hess_count"]
        new_h = []
        for i, (x, prev, given) in enumerate(zip(g, sel["hess"], sel["hessian"])):
            refresh = (old[i] % update_each == 0) | (hc[i] == 0)
            h = torch.where(refresh, given.to(prev.dtype), prev)
            if avg_conv_kernel and x.dim() == 4:
                h = k.means(k.absolute([h]), (2, 3))[0].expand_as(h).clone()
            new_h.append(h)
        new_hc = k.add(hc, 1, donate=donate)
        counts = steps.increment(old, donate=donate)
        mu = k.add(k.mul(sel["mu"], b1, donate=donate), g, 1 - b1, donate=True)
        nu = k.addcmul(k.mul(sel["nu"], b2, donate=donate), new_h, new_h, 1 - b2, donate=True)
        ts = steps.as_float(counts, g)
        bc1 = k.scalars_for(steps.bias_correction(b1, ts), g)
        bc2 = k.scalars_for(steps.bias_correction(b2, ts), g)
        denom = k.add(k.power(k.div(nu, bc2), hessian_power / 2), eps, donate=True)
        inv_bc1 = k.leafwise(lambda c: 1.0 / c, bc1)
        u = k.scaled_div(mu, denom, k.scalars_for(inv_bc1, g))
        new_state = ScaleByAdahessianState(
            count=sel.rebuild(counts, "count"), mu=sel.rebuild(mu, "mu"), nu=sel.rebuild(nu, "nu"),
            hess=sel.rebuild(new_h, "hess"), hess_count=sel.rebuild(new_hc, "hess_count"))
        return sel.rebuild(u), new_state

    return declare(GradientTransformation(init_fn, update_fn), Needs.MATRIX if avg_conv_kernel else Needs.LEAVES)
