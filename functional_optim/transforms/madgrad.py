"""MADGRAD's momentumized dual averaging with a cube-root denominator (Defazio & Jelassi)."""

from __future__ import annotations

from typing import Any, NamedTuple

import optree
import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation, Needs, declare
from ..hyperparams import check_range, concrete
from ..tree import select


class ScaleByMadgradState(NamedTuple):
    """State of :func:`scale_by_madgrad` (timm's per-param keys in brackets)."""

    count: Any  # tree of 0-d int32: updates each leaf has received [step]
    grad_sum_sq: Any  # tree like params: the lambda-weighted sum of squared gradients [grad_sum_sq]
    s: Any  # tree like params: the lambda-weighted sum of gradients [s]
    x0: Any  # tree like params: the params at the leaf's first update [x0]; None when momentum == 0


def _is_zero(value: Any) -> bool:
    return not isinstance(value, torch.Tensor) and value == 0


def scale_by_madgrad(learning_rate: float | torch.Tensor = 1e-2, momentum: float | torch.Tensor = 0.9,
                     eps: float | torch.Tensor = 1e-6, weight_decay: float | torch.Tensor = 0.0,
                     decoupled_decay: bool = False) -> GradientTransformation:
    r"""MADGRAD's step as an update ``p_new - p`` (timm's / facebookresearch's numerics).

    MADGRAD's step size enters its dual averages, so the learning rate is an argument of
    the transform and its output is the whole step: apply it with ``apply_updates`` (no
    ``scale_by_learning_rate`` after it). Per leaf, at its step :math:`t` (from 1), with
    :math:`\eta` the learning rate, :math:`\mu` the momentum and :math:`\lambda` the weight
    decay, in the order the code computes it:

    .. math::

        \eta' &= \eta + \epsilon, \qquad c = 1 - \mu, \qquad \ell_t = \eta' \sqrt{t} \\
        p &\leftarrow p\,(1 - \eta \lambda) \quad\text{(decoupled decay)}, \qquad
            g \leftarrow g + \lambda p \quad\text{(otherwise)} \\
        x_0 &= \text{the params at the leaf's first step if } \mu \ne 0,\ \text{else }
            p + s_{t-1} / (\sqrt[3]{\nu_{t-1}} + \epsilon) \\
        \nu_t &= \nu_{t-1} + \ell_t\, g^2, \qquad s_t = s_{t-1} + \ell_t\, g \\
        z &= x_0 - s_t / (\sqrt[3]{\nu_t} + \epsilon) \\
        p_{new} &= z \text{ if } \mu = 0, \text{ else } (1 - c)\, p + c\, z

    and the update is :math:`p_{new} - p_{\text{before decay}}`. :math:`\nu_0 = s_0 = 0`.
    :math:`\epsilon` is added to the learning rate as well as to the cube root (timm's
    code does both). The cube root has derivative 0 where :math:`\nu` is exactly 0
    (:func:`functional_optim.kernels.power`). Elementwise (``Needs.ELEMENTWISE``). Complex
    params are not supported (the cube root of a sum of squares is real math).

    Args:
      learning_rate: :math:`\eta` > 0 (number or 0-d tensor). Default 1e-2.
      momentum: :math:`\mu` in [0, 1). 0 drops the ``x0`` state. Default 0.9.
      eps: :math:`\epsilon` >= 0. Default 1e-6.
      weight_decay: :math:`\lambda` >= 0. Default 0.
      decoupled_decay: decay the params (AdamW-style, scaled by :math:`\eta`) instead of
        adding :math:`\lambda p` to the gradient. Default False.

    References:
      Defazio & Jelassi, *Adaptivity without Compromise: A Momentumized, Adaptive, Dual
      Averaged Gradient Method for Stochastic Optimization*, 2021, arXiv:2101.11075.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_madgrad(learning_rate=1.0, momentum=0.0)
      >>> params = {"w": torch.zeros(2)}
      >>> u, state = tx.update({"w": torch.tensor([1.0, 8.0])}, tx.init(params), params)
      >>> u["w"]  # about -s / nu**(1/3) with s = g, nu = g**2 (eps = 1e-6 aside)
      tensor([-1.0000, -2.0000])
    """
    check_range("learning_rate", learning_rate, 0.0)
    if concrete(learning_rate) == 0.0:
        raise ValueError(f"Learning rate {learning_rate} must be positive (learning_rate must be > 0)")
    check_range("momentum", momentum, 0.0, 1.0)
    check_range("eps", eps, 0.0)
    check_range("weight_decay", weight_decay, 0.0)
    if not isinstance(decoupled_decay, bool):
        raise TypeError(f"decoupled_decay must be a bool, got {type(decoupled_decay).__name__}")
    use_x0 = not _is_zero(momentum)
    decay = not _is_zero(weight_decay)

    def init_fn(params):
        def zeros(p):
            return None if p is None else torch.zeros_like(p)

        x0 = optree.tree_map(lambda p: None if p is None else p.detach().clone(), params,
                             none_is_leaf=True) if use_x0 else None
        return ScaleByMadgradState(count=steps.leaf_counts(params),
                                   grad_sum_sq=optree.tree_map(zeros, params, none_is_leaf=True),
                                   s=optree.tree_map(zeros, params, none_is_leaf=True), x0=x0)

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del extra
        if params is None:
            raise ValueError("scale_by_madgrad needs params (update(updates, state, params))")
        trees = dict(count=state.count, nu=state.grad_sum_sq, s=state.s, params=params)
        if use_x0:
            trees["x0"] = state.x0
        sel = select(updates, **trees)
        g = sel.updates
        if not g:
            return updates, state
        ps, nus, ss = sel["params"], sel["nu"], sel["s"]
        if use_x0:  # timm takes x0 at a param's first step (params may change after init)
            x0 = k.where([c == 0 for c in sel["count"]], ps, sel["x0"])
        counts = steps.increment(sel["count"], donate=donate)
        lamb = steps.per_leaf(lambda t: (learning_rate + eps) * torch.sqrt(t), counts, ps)
        lamb = k.scalars_for(lamb, ps)
        p = ps
        if decay and decoupled_decay:
            p = k.mul(ps, 1.0 - learning_rate * weight_decay)
        elif decay:
            g = k.add(g, ps, weight_decay)
        if not use_x0:  # x0 from the sums before this step
            x0 = k.addcdiv(p, ss, k.add(k.power(nus, 1 / 3), eps, donate=True), 1)
        new_nu = k.addcmul(nus, g, g, lamb, donate=donate)
        rms = k.add(k.power(new_nu, 1 / 3), eps, donate=True)
        new_s = k.add(ss, g, lamb, donate=donate)
        z = k.addcdiv(x0, new_s, rms, -1)
        if use_x0:
            ck = 1.0 - momentum
            p_new = k.add(k.mul(p, 1.0 - ck), z, ck)
        else:
            p_new = z
        u = k.sub(p_new, ps, donate=True)
        new_state = ScaleByMadgradState(count=sel.rebuild(counts, "count"), grad_sum_sq=sel.rebuild(new_nu, "nu"),
                                         s=sel.rebuild(new_s, "s"), x0=sel.rebuild(x0, "x0") if use_x0 else None)
        return sel.rebuild(u), new_state

    return declare(GradientTransformation(init_fn, update_fn), Needs.ELEMENTWISE)
