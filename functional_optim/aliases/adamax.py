"""Adamax with torch.optim.Adamax's arguments and numerics."""

from __future__ import annotations

from typing import Any

import torch

from ..base import GradientTransformation, ScalarOrSchedule
from ..combine import chain
from ..hyperparams import check_range
from ..transforms import add_decayed_weights, scale_by_adamax, scale_by_learning_rate
from ._common import is_zero, maximize_part
from .adam import _betas


def adamax(lr: ScalarOrSchedule = 2e-3, betas: tuple[Any, Any] = (0.9, 0.999), eps: float | torch.Tensor = 1e-8,
           weight_decay: ScalarOrSchedule = 0, *, maximize: bool = False) -> GradientTransformation:
    """Adamax exactly as ``torch.optim.Adamax`` (same names, order and defaults).

    Per leaf, with ``t`` its own update count: ``g = -g`` if maximize;
    ``g += weight_decay * p``; ``m = lerp(m, g, 1 - beta1)``;
    ``u = max(beta2 * u, |g| + eps)`` (eps inside the max, per real/imaginary component
    for complex params); update ``-lr / (1 - beta1**t) * m / u``.

    Args:
      lr: learning rate >= 0: a number, a 0-d tensor, or a schedule ``count -> lr``. Default 2e-3.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.999).
      eps: added to ``|g|`` inside the max, >= 0. Default 1e-8.
      weight_decay: L2 penalty >= 0 (number, 0-d tensor or schedule). Default 0.
      maximize: maximize the objective instead of minimizing. Default False.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.adamax(lr=0.1)
      >>> params = {"w": torch.zeros(2)}
      >>> updates, state = opt.update({"w": torch.tensor([2.0, -4.0])}, opt.init(params), params)
      >>> fo.apply_updates(params, updates)["w"]
      tensor([-0.1000,  0.1000])
    """
    check_range("lr", lr, 0.0, schedule_ok=True)
    b1, b2 = _betas(betas)
    check_range("eps", eps, 0.0)
    check_range("weight_decay", weight_decay, 0.0, schedule_ok=True)
    parts = maximize_part(maximize)
    if not is_zero(weight_decay):
        parts.append(add_decayed_weights(weight_decay))
    parts.append(scale_by_adamax(b1, b2, eps))
    parts.append(scale_by_learning_rate(lr))
    return chain(*parts)
