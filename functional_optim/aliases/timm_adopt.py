"""timm's Adopt with timm's argument names, order and defaults (``fo.timm.adopt``, ``fo.adopt``)."""

from __future__ import annotations

from typing import Any

import torch

from ..base import GradientTransformation, ScalarOrSchedule
from ..combine import chain
from ..hyperparams import check_range, is_schedule
from ..transforms import add_decayed_weights, scale_by_learning_rate
from ..transforms.adopt import scale_by_adopt
from ._common import is_zero, maximize_part
from .timm_adam_family import _betas, _bools, _max_lr

__all__ = ["adopt"]


def adopt(lr: ScalarOrSchedule = 1e-3, betas: tuple[Any, Any] = (0.9, 0.9999), eps: float | torch.Tensor = 1e-6,
          clip_exp: float | torch.Tensor | None = 0.333, weight_decay: float | torch.Tensor = 0.0,
          decoupled: bool = False, corrected_weight_decay: bool = False, *, caution: bool = False,
          maximize: bool = False, max_lr_snapshot: float | torch.Tensor | None = None) -> GradientTransformation:
    r"""ADOPT exactly as ``timm.optim.Adopt`` (same names, order and defaults; timm's
    ``foreach``, ``capturable`` and ``differentiable`` are not arguments here).

    :math:`g \leftarrow -g` with ``maximize``; coupled decay :math:`g \mathrel{+}= \lambda p`
    unless ``decoupled``; ADOPT's step :math:`u` (:func:`~functional_optim.scale_by_adopt`:
    0 at a param's first gradient, then the clipped normalised gradient's momentum, masked
    with ``caution``); :math:`p \leftarrow p - \eta u`. With ``decoupled`` the params also
    shrink by :math:`s\lambda p` from their second update on, :math:`s = \eta`, or
    :math:`\eta^2/\eta_{\max}` with ``corrected_weight_decay`` (then ``lr`` must be a number
    or 0-d tensor: the decay reads it).

    Args:
      lr: learning rate :math:`\eta` >= 0 (number, 0-d tensor or schedule). Default 1e-3.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.9999).
      eps: floor of :math:`\sqrt{v}`, >= 0. Default 1e-6.
      clip_exp: exponent of the clip bound :math:`(t-1)^c`, or None. Default 0.333.
      weight_decay: :math:`\lambda` >= 0. Default 0.
      decoupled: decoupled (AdamW-style) decay. Default False.
      corrected_weight_decay: decoupled decay scaled by :math:`\eta^2/\eta_{\max}`. Default False.
      caution: Cautious Optimizers' mask (keyword only). Default False.
      maximize: maximize the objective (keyword only). Default False.
      max_lr_snapshot: :math:`\eta_{\max}` (keyword only; timm's group key): default the
        ``lr`` given here (the peak lr; required with a scheduled lr).

    References:
      Taniguchi et al., *ADOPT: Modified Adam Can Converge with Any beta_2 with the Optimal
      Rate*, NeurIPS 2024, arXiv:2411.02853; Defazio, *Why Gradients Rapidly Increase Near
      the End of Training*, 2025, arXiv:2506.02285.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.timm.adopt(lr=0.1)
      >>> params = {"w": torch.ones(2)}
      >>> state = opt.init(params)
      >>> updates, state = opt.update({"w": torch.tensor([2.0, -2.0])}, state, params)
      >>> fo.apply_updates(params, updates)["w"]  # the first gradient only sets the second moment
      tensor([1., 1.])
      >>> updates, state = opt.update({"w": torch.tensor([2.0, -2.0])}, state, params)
      >>> updates["w"]  # clip bound (t - 1)^0.333 = 1: -0.1 * (1 - 0.9) * 1
      tensor([-0.0100,  0.0100])
    """
    check_range("lr", lr, 0.0, schedule_ok=True)
    check_range("eps", eps, 0.0)
    b1, b2 = _betas(betas)
    check_range("weight_decay", weight_decay, 0.0)
    _bools(decoupled=decoupled, corrected_weight_decay=corrected_weight_decay, caution=caution)
    max_lr = _max_lr(lr, corrected_weight_decay, max_lr_snapshot)
    decay = not is_zero(weight_decay)
    step_decay = 0.0
    if decay and decoupled:
        if max_lr is None:
            step_decay = weight_decay
        elif is_schedule(lr):
            raise TypeError("corrected_weight_decay needs lr as a number or 0-d tensor, got a schedule "
                            "(use fo.inject_hyperparams to schedule it)")
        else:  # -lr * (wd * lr / max_lr) * p = -(lr**2 / max_lr) * wd * p
            step_decay = weight_decay * lr / max_lr
    return chain(
        *maximize_part(maximize),
        *([add_decayed_weights(weight_decay)] if decay and not decoupled else []),
        scale_by_adopt(b1, b2, eps, clip_exp, caution=caution, weight_decay=step_decay),
        scale_by_learning_rate(lr),
    )
