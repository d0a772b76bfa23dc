"""NAdam with torch.optim.NAdam's arguments and numerics."""

from __future__ import annotations

from typing import Any

import torch

from ..base import GradientTransformation, ScalarOrSchedule
from ..combine import chain
from ..hyperparams import check_range, is_schedule
from ..transforms import add_decayed_weights, scale_by_learning_rate, scale_by_nadam
from ..transforms.weight_decay import add_decoupled_weight_decay
from ._common import is_zero, maximize_part
from .adam import _betas


def nadam(lr: ScalarOrSchedule = 2e-3, betas: tuple[Any, Any] = (0.9, 0.999), eps: float | torch.Tensor = 1e-8,
          weight_decay: ScalarOrSchedule = 0, momentum_decay: float | torch.Tensor = 4e-3,
          decoupled_weight_decay: bool = False, *, maximize: bool = False) -> GradientTransformation:
    """NAdam exactly as ``torch.optim.NAdam`` (same names, order and defaults).

    Per leaf, with ``t`` its own update count: ``g = -g`` if maximize; coupled
    ``g += weight_decay * p`` unless ``decoupled_weight_decay``; NAdam's moments with the
    momentum schedule ``mu_t = beta1 (1 - 0.5 * 0.96**(t * momentum_decay))`` and its
    running product kept in torch's float32 scalar (:func:`scale_by_nadam`); decoupled
    decay adds ``weight_decay * p`` after them (torch's ``p *= 1 - lr * weight_decay``);
    update ``-lr * (...)``. Not optax's ``nadam`` (Adam with a Nesterov first moment).

    Args:
      lr: learning rate >= 0: a number, a 0-d tensor, or a schedule ``count -> lr``. Default 2e-3.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.999).
      eps: added to the denominator, >= 0. Default 1e-8.
      weight_decay: >= 0 (number, 0-d tensor or schedule). Default 0.
      momentum_decay: decay of the momentum schedule, >= 0. Default 4e-3.
      decoupled_weight_decay: AdamW-style decay ``p *= 1 - lr * weight_decay``. Default False.
      maximize: maximize the objective instead of minimizing. Default False.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.nadam(lr=0.1)
      >>> params = {"w": torch.zeros(2)}
      >>> updates, state = opt.update({"w": torch.ones(2)}, opt.init(params), params)
      >>> fo.apply_updates(params, updates)["w"]  # torch.optim.NAdam's first step too
      tensor([-0.1056, -0.1056])
    """
    check_range("lr", lr, 0.0, schedule_ok=True)
    b1, b2 = _betas(betas)
    check_range("eps", eps, 0.0)
    check_range("weight_decay", weight_decay, 0.0, schedule_ok=True)
    check_range("momentum_decay", momentum_decay, 0.0)
    if not isinstance(decoupled_weight_decay, bool):
        raise TypeError(f"decoupled_weight_decay must be a bool, got {type(decoupled_weight_decay).__name__}")
    decay = [] if is_zero(weight_decay) else [add_decayed_weights(weight_decay)]
    if decoupled_weight_decay and decay and not (is_schedule(lr) or is_schedule(weight_decay)):
        # torch's p.mul_(1 - lr * weight_decay), rounded as torch rounds it (an infinite
        # param stays infinite, where lr * (u + weight_decay * p) would make it NaN)
        return chain(*maximize_part(maximize), scale_by_nadam(b1, b2, eps, momentum_decay),
                     scale_by_learning_rate(lr), add_decoupled_weight_decay(weight_decay, lr))
    return chain(
        *maximize_part(maximize),
        *([] if decoupled_weight_decay else decay),
        scale_by_nadam(b1, b2, eps, momentum_decay),
        *(decay if decoupled_weight_decay else []),
        scale_by_learning_rate(lr),
    )
