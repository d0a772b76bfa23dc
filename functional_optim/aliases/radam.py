"""RAdam with torch.optim.RAdam's arguments and numerics."""

from __future__ import annotations

from typing import Any

import torch

from ..base import GradientTransformation, ScalarOrSchedule
from ..combine import chain
from ..hyperparams import check_range, is_schedule
from ..transforms import add_decayed_weights, scale_by_learning_rate, scale_by_radam
from ..transforms.weight_decay import add_decoupled_weight_decay
from ._common import is_zero, maximize_part
from .adam import _betas


def radam(lr: ScalarOrSchedule = 1e-3, betas: tuple[Any, Any] = (0.9, 0.999), eps: float | torch.Tensor = 1e-8,
          weight_decay: ScalarOrSchedule = 0, decoupled_weight_decay: bool = False, *,
          maximize: bool = False) -> GradientTransformation:
    """RAdam exactly as ``torch.optim.RAdam`` (same names, order and defaults).

    Per leaf, with ``t`` its own update count: ``g = -g`` if maximize; coupled
    ``g += weight_decay * p`` unless ``decoupled_weight_decay``; Adam's moments, then
    ``m / bc1`` rectified by ``r_t * sqrt(bc2) / (sqrt(v) + eps)`` where ``rho_t > 5``
    (strictly; from ``t = 6`` with ``beta2 = 0.999``), plain ``m / bc1`` before
    (:func:`scale_by_radam`); decoupled decay adds ``weight_decay * p`` after them
    (torch's ``p *= 1 - lr * weight_decay``); update ``-lr * (...)``. torch's eps
    placement, not optax's (``optax.radam`` adds eps to ``sqrt(v / bc2)``).

    Args:
      lr: learning rate >= 0: a number, a 0-d tensor, or a schedule ``count -> lr``. Default 1e-3.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.999).
      eps: added to ``sqrt(v)``, >= 0. Default 1e-8.
      weight_decay: >= 0 (number, 0-d tensor or schedule). Default 0.
      decoupled_weight_decay: AdamW-style decay ``p *= 1 - lr * weight_decay``. Default False.
      maximize: maximize the objective instead of minimizing. Default False.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.radam(lr=0.1)
      >>> params = {"w": torch.zeros(2)}
      >>> updates, state = opt.update({"w": torch.ones(2)}, opt.init(params), params)
      >>> fo.apply_updates(params, updates)["w"]
      tensor([-0.1000, -0.1000])
    """
    check_range("lr", lr, 0.0, schedule_ok=True)
    b1, b2 = _betas(betas)
    check_range("eps", eps, 0.0)
    check_range("weight_decay", weight_decay, 0.0, schedule_ok=True)
    if not isinstance(decoupled_weight_decay, bool):
        raise TypeError(f"decoupled_weight_decay must be a bool, got {type(decoupled_weight_decay).__name__}")
    decay = [] if is_zero(weight_decay) else [add_decayed_weights(weight_decay)]
    if decoupled_weight_decay and decay and not (is_schedule(lr) or is_schedule(weight_decay)):
        # torch's p.mul_(1 - lr * weight_decay), rounded as torch rounds it (an infinite
        # param stays infinite, where lr * (u + weight_decay * p) would make it NaN)
        return chain(*maximize_part(maximize), scale_by_radam(b1, b2, eps),
                     scale_by_learning_rate(lr), add_decoupled_weight_decay(weight_decay, lr))
    return chain(
        *maximize_part(maximize),
        *([] if decoupled_weight_decay else decay),
        scale_by_radam(b1, b2, eps),
        *(decay if decoupled_weight_decay else []),
        scale_by_learning_rate(lr),
    )
