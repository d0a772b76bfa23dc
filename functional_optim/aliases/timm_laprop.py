"""timm's LaProp with timm's argument names, order and defaults (``fo.timm.laprop``, ``fo.laprop``)."""

from __future__ import annotations

from typing import Any

import torch

from ..base import GradientTransformation, ScalarOrSchedule
from ..combine import chain
from ..hyperparams import check_range
from ..transforms import scale
from ..transforms.laprop import scale_by_laprop
from ..transforms.weight_decay import add_decoupled_weight_decay_after_step
from ..wrappers.caution import cautious
from ._common import is_zero
from .timm_adam_family import _betas, _bools, _max_lr

__all__ = ["laprop"]


def laprop(lr: ScalarOrSchedule = 4e-4, betas: tuple[Any, Any] = (0.9, 0.999), eps: float | torch.Tensor = 1e-15,
           weight_decay: float | torch.Tensor = 0.0, caution: bool = False, corrected_weight_decay: bool = False, *,
           max_lr_snapshot: float | torch.Tensor | None = None) -> GradientTransformation:
    r"""LaProp exactly as ``timm.optim.LaProp`` (same names, order and defaults).

    Per param: LaProp's step :math:`u` (the RMS-normalised gradient averaged with the lr
    inside the momentum, bias-corrected: :func:`~functional_optim.scale_by_laprop`),
    masked by ``caution`` (:math:`\phi = [u \odot g > 0] / \max(\operatorname{mean}\phi, 10^{-3})`);
    :math:`p \leftarrow p - u`; then the decay :math:`p \leftarrow p\,(1 - r)` of the
    stepped params, :math:`r = \eta\lambda`, or :math:`(\eta^2/\eta_{\max})\lambda` with
    ``corrected_weight_decay``. That is ``chain([cautious](scale_by_laprop(lr, b1, b2, eps)),
    scale(-1), [add_decoupled_weight_decay_after_step(weight_decay, lr, ...)])``.

    Args:
      lr: learning rate :math:`\eta` >= 0 (number, 0-d tensor or schedule; a schedule
        needs ``weight_decay=0``, as the decay takes a number or 0-d tensor). Default 4e-4.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.999).
      eps: added to the gradient's RMS, >= 0. Default 1e-15.
      weight_decay: decoupled decay :math:`\lambda` >= 0, after the step. Default 0.
      caution: Cautious Optimizers' mask. Default False.
      corrected_weight_decay: decay rate :math:`\eta^2\lambda/\eta_{\max}`. Default False.
      max_lr_snapshot: :math:`\eta_{\max}` (keyword only; timm's group key): default the
        ``lr`` given here (the peak lr; required with a scheduled lr).

    References:
      Ziyin, Wang & Ueda, *LaProp: Separating Momentum and Adaptivity in Adam*, 2020,
      arXiv:2002.04839.
      Defazio, *Why Gradients Rapidly Increase Near the End of Training*, 2025, arXiv:2506.02285.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.timm.laprop(lr=0.1, weight_decay=0.5)
      >>> params = {"w": torch.tensor([1.0, 2.0])}
      >>> updates, state = opt.update({"w": torch.tensor([3.0, -1.0])}, opt.init(params), params)
      >>> fo.apply_updates(params, updates)["w"]  # (p - 0.1 sign(g)) (1 - 0.05)
      tensor([0.8550, 1.9950])
    """
    check_range("learning rate", lr, 0.0, schedule_ok=True)
    check_range("epsilon", eps, 0.0)
    b1, b2 = _betas(betas)
    check_range("weight_decay", weight_decay, 0.0)
    _bools(caution=caution, corrected_weight_decay=corrected_weight_decay)
    max_lr = _max_lr(lr, corrected_weight_decay, max_lr_snapshot)
    step = scale_by_laprop(lr, b1, b2, eps)
    decay = [] if is_zero(weight_decay) else [
        add_decoupled_weight_decay_after_step(weight_decay, lr, max_learning_rate=max_lr)]
    return chain(cautious(step) if caution else step, scale(-1.0), *decay)
