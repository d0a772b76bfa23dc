"""Decoupled weight decay applied to the params directly, with timm's corrected rate."""

from __future__ import annotations

from typing import Any

import torch

from .. import kernels as k
from ..base import GradientTransformation, init_empty_state, mark_elementwise
from ..hyperparams import check_number, check_range, concrete, is_schedule
from ..tree import select


def decoupled_decay_rate(weight_decay: Any, learning_rate: Any, max_learning_rate: Any = None, *,
                         unscaled: bool = False) -> Any:
    r"""The fraction :math:`r` of each param that decoupled weight decay removes in one step.

    :math:`r = \eta\,\lambda` (AdamW, Loshchilov & Hutter), or with a maximum learning rate
    :math:`r = (\eta^2 / \eta_{\max})\,\lambda` (timm's ``corrected_weight_decay``: the
    decay follows the schedule's square, so that its strength relative to the step stays
    that of the peak; Defazio, arXiv:2506.02285). With ``unscaled`` (Big Vision's decay, not
    scaled by the lr): :math:`r = \lambda`, or corrected :math:`r = (\eta / \eta_{\max})\lambda`.
    Numbers give a number, tensors a 0-d tensor.

    Args:
      weight_decay: :math:`\lambda`.
      learning_rate: :math:`\eta`.
      max_learning_rate: :math:`\eta_{\max}`; None (default): the uncorrected rate.
      unscaled: the rate without the factor :math:`\eta` (keyword only). Default False.

    Example:
      >>> from functional_optim.transforms.weight_decay import decoupled_decay_rate
      >>> decoupled_decay_rate(0.1, 0.5), decoupled_decay_rate(0.1, 0.5, max_learning_rate=1.0)
      (0.05, 0.025)
      >>> decoupled_decay_rate(0.1, 0.5, unscaled=True), decoupled_decay_rate(0.1, 0.5, 1.0, unscaled=True)
      (0.1, 0.05)
    """
    if unscaled:
        return weight_decay if max_learning_rate is None else (learning_rate / max_learning_rate) * weight_decay
    scale = learning_rate if max_learning_rate is None else learning_rate ** 2 / max_learning_rate
    return scale * weight_decay


def _check_decoupled(weight_decay: Any, learning_rate: Any, max_learning_rate: Any) -> None:
    """The checks of a decoupled decay's arguments (numbers or 0-d tensors, not schedules)."""
    check_range("weight_decay", weight_decay, 0.0)
    check_range("learning_rate", learning_rate, 0.0)
    if max_learning_rate is not None:
        check_range("max_learning_rate", max_learning_rate, 0.0)
        if concrete(max_learning_rate) == 0.0:
            raise ValueError("Invalid max_learning_rate: 0.0 (expected max_learning_rate > 0)")
    for name, value in (("weight_decay", weight_decay), ("learning_rate", learning_rate)):
        if is_schedule(value):
            raise TypeError(f"{name} must be a number or a 0-d tensor, got a schedule "
                            "(use fo.inject_hyperparams to schedule it)")
        check_number(name, value)


def add_decoupled_weight_decay(weight_decay: float | torch.Tensor, learning_rate: float | torch.Tensor, *,
                               max_learning_rate: float | torch.Tensor | None = None,
                               unscaled: bool = False) -> GradientTransformation:
    r"""Add :math:`-r\,p` to each update: the params shrink by the fraction :math:`r`
    (decoupled weight decay applied to the weights, as timm's ``decoupled_decay`` and
    torch's AdamW do).

    Per leaf, in the order computed:

    .. math::

        r &= \eta\,\lambda \quad\text{or, with } \eta_{\max}:\quad r = (\eta^2/\eta_{\max})\,\lambda
            \quad (\texttt{unscaled}: r = \lambda \text{ or } (\eta/\eta_{\max})\,\lambda) \\
        u &\leftarrow u + (p\,(1 - r) - p)

    It goes **last** in a chain, after :func:`~functional_optim.scale_by_learning_rate`
    (the rate already carries :math:`\eta`): applying the update then gives
    :math:`p (1 - r) - \eta\,d`, timm's ``p.mul_(1 - r)`` followed by its step. The
    corrected form (``max_learning_rate``: timm's ``corrected_weight_decay=True`` with
    ``max_lr_snapshot``) scales the decay with :math:`\eta^2/\eta_{\max}`, so that under an
    lr schedule it decays as the square of the schedule (Defazio, 2025). Needs ``params``.

    Args:
      weight_decay: :math:`\lambda` >= 0, a number or 0-d tensor.
      learning_rate: :math:`\eta` >= 0, a number or 0-d tensor (for a schedule, build the
        chain with :func:`~functional_optim.inject_hyperparams`).
      max_learning_rate: :math:`\eta_{\max}` > 0 (a number or 0-d tensor) for the corrected
        rate; None (default) for :math:`r = \eta\lambda`.
      unscaled: Big Vision's decay, not scaled by :math:`\eta` (timm's
        ``AdafactorBigVision(unscaled_wd=True)``; keyword only). Default False.

    References:
      Loshchilov & Hutter, *Decoupled Weight Decay Regularization*, 2019, arXiv:1711.05101.
      Defazio, *Why Gradients Rapidly Increase Near the End of Training*, 2025, arXiv:2506.02285.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.add_decoupled_weight_decay(0.1, 0.5, max_learning_rate=1.0)
      >>> params = {"w": torch.tensor([2.0, -4.0])}
      >>> tx.update({"w": torch.zeros(2)}, tx.init(params), params)[0]["w"]  # -(0.25 * 0.1) * p
      tensor([-0.0500,  0.1000])
    """
    _check_decoupled(weight_decay, learning_rate, max_learning_rate)

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del extra
        if params is None:
            raise ValueError("add_decoupled_weight_decay needs params: call update(updates, state, params)")
        sel = select(updates, params=params)
        if not len(sel):
            return updates, state
        # 1 - r is formed once per step (a Python number, or a 0-d tensor); kernels.add_shrink
        # adds p * (1 - r) - p, which rounds as torch's and timm's p.mul_(1 - r) (-r * p drifts
        # from them: 1.4e-6 after 50 float32 AdamW steps)
        # (bfloat16/float16 params keep -r * p: rounded there, p * (1 - r) - p is mostly 0).
        # Both read an infinite param's decay as 0: torch's p * (1 - r) stays inf, where
        # p + (-r * p) would be inf - inf
        rate = decoupled_decay_rate(weight_decay, learning_rate, max_learning_rate, unscaled=unscaled)
        ps, us = sel["params"], sel.updates
        exact = [i for i, p in enumerate(ps) if p.dtype not in (torch.bfloat16, torch.float16)]
        reduced = [i for i in range(len(ps)) if i not in set(exact)]
        out = list(us)
        if exact:
            for i, u in zip(exact, k.add_shrink([us[i] for i in exact], [ps[i] for i in exact], 1 - rate,
                                                donate=donate)):
                out[i] = u
        if reduced:
            for i, u in zip(reduced, k.add_finite_scaled([us[i] for i in reduced], [ps[i] for i in reduced],
                                                         -rate, donate=donate)):
                out[i] = u
        return sel.rebuild(out), state

    return mark_elementwise(GradientTransformation(init_empty_state, update_fn))


def add_proximal_weight_decay(weight_decay: float | torch.Tensor,
                              learning_rate: float | torch.Tensor) -> GradientTransformation:
    r"""Weight decay as a proximal step: the params after the update are divided by
    :math:`1 + r` (Adan's default decay, timm's ``Adan(no_prox=False)``).

    Per leaf, in the order computed, with :math:`u` the update so far (lr included):

    .. math::

        r &= \eta\,\lambda \\
        u &\leftarrow (p + u) / (1 + r) - p

    so that applying the update gives :math:`(p + u) / (1 + r)`, the minimiser of
    :math:`\tfrac{\lambda}{2}\|x\|^2 + \tfrac{1}{2\eta}\|x - (p + u)\|^2`. It goes **last** in
    a chain, after :func:`~functional_optim.scale_by_learning_rate`. Needs ``params``.

    Args:
      weight_decay: :math:`\lambda` >= 0, a number or 0-d tensor.
      learning_rate: :math:`\eta` >= 0, a number or 0-d tensor.

    References:
      Xie et al., *Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep
      Models*, 2022, arXiv:2208.06677 (Algorithm 1, the proximal update).

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.add_proximal_weight_decay(0.5, 0.5)
      >>> params = {"w": torch.tensor([2.5, -5.0])}
      >>> tx.update({"w": torch.tensor([0.0, 0.0])}, tx.init(params), params)[0]["w"]  # p / 1.25 - p
      tensor([-0.5000,  1.0000])
    """
    check_range("weight_decay", weight_decay, 0.0)
    check_range("learning_rate", learning_rate, 0.0)

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del extra
        if params is None:
            raise ValueError("add_proximal_weight_decay needs params: call update(updates, state, params)")
        sel = select(updates, params=params)
        if not len(sel):
            return updates, state
        ps = sel["params"]
        shrunk = k.div(k.add(sel.updates, ps, donate=donate), 1 + learning_rate * weight_decay, donate=True)
        return sel.rebuild(k.sub(shrunk, ps, donate=True)), state

    return mark_elementwise(GradientTransformation(init_empty_state, update_fn))


def add_decoupled_weight_decay_after_step(weight_decay: float | torch.Tensor, learning_rate: float | torch.Tensor, *,
                                          max_learning_rate: float | torch.Tensor | None = None
                                          ) -> GradientTransformation:
    r"""Decoupled weight decay of the params as they are *after* the update: they shrink by
    the fraction :math:`r` once the step is taken (timm's LaProp decays ``p.add_(p, alpha=-r)``
    after its step; :func:`add_decoupled_weight_decay` shrinks the params before it).

    Per leaf, in the order computed, with :math:`u` the update so far (lr included):

    .. math::

        r &= \eta\,\lambda \quad\text{or, with } \eta_{\max}:\quad r = (\eta^2/\eta_{\max})\,\lambda \\
        u &\leftarrow u - r\,(p + u)

    so that applying the update gives :math:`(p + u)(1 - r)`. It goes **last** in a chain,
    after the learning rate. Needs ``params``.

    Args:
      weight_decay: :math:`\lambda` >= 0, a number or 0-d tensor.
      learning_rate: :math:`\eta` >= 0, a number or 0-d tensor.
      max_learning_rate: :math:`\eta_{\max}` > 0 for timm's corrected rate; None (default)
        for :math:`r = \eta\lambda`.

    References:
      Loshchilov & Hutter, *Decoupled Weight Decay Regularization*, 2019, arXiv:1711.05101.
      Defazio, *Why Gradients Rapidly Increase Near the End of Training*, 2025, arXiv:2506.02285.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.add_decoupled_weight_decay_after_step(0.5, 0.5)
      >>> params = {"w": torch.tensor([2.0, -4.0])}
      >>> tx.update({"w": torch.tensor([2.0, 0.0])}, tx.init(params), params)[0]["w"]  # (p + u) 0.75 - p
      tensor([1., 1.])
    """
    _check_decoupled(weight_decay, learning_rate, max_learning_rate)

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del extra
        if params is None:
            raise ValueError("add_decoupled_weight_decay_after_step needs params: call update(updates, state, params)")
        sel = select(updates, params=params)
        if not len(sel):
            return updates, state
        rate = decoupled_decay_rate(weight_decay, learning_rate, max_learning_rate)
        stepped = k.add(sel["params"], sel.updates)  # the params after the step
        return sel.rebuild(k.add(sel.updates, stepped, -rate, donate=donate)), state

    return mark_elementwise(GradientTransformation(init_empty_state, update_fn))
