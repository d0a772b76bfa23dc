"""Adadelta with torch.optim.Adadelta's arguments and numerics."""

from __future__ import annotations

import torch

from ..base import GradientTransformation, ScalarOrSchedule
from ..combine import chain
from ..hyperparams import check_range
from ..transforms import add_decayed_weights, scale_by_adadelta, scale_by_learning_rate
from ._common import is_zero, maximize_part


def adadelta(lr: ScalarOrSchedule = 1.0, rho: float | torch.Tensor = 0.9, eps: float | torch.Tensor = 1e-6,
             weight_decay: ScalarOrSchedule = 0, *, maximize: bool = False) -> GradientTransformation:
    """Adadelta exactly as ``torch.optim.Adadelta`` (same names, order and defaults).

    Per leaf: ``g = -g`` if maximize; ``g += weight_decay * p``;
    ``sq = rho * sq + (1 - rho) * g**2``; ``delta = sqrt(acc + eps) / sqrt(sq + eps) * g``;
    ``acc = rho * acc + (1 - rho) * delta**2``; update ``-lr * delta``.

    Args:
      lr: coefficient of the delta, >= 0: a number, a 0-d tensor, or a schedule. Default 1.0.
      rho: decay of the moving averages, in [0, 1]. Default 0.9.
      eps: added inside the square roots, >= 0. Default 1e-6.
      weight_decay: L2 penalty >= 0 (number, 0-d tensor or schedule). Default 0.
      maximize: maximize the objective instead of minimizing. Default False.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.adadelta(rho=0.0, eps=1.0)
      >>> params = {"w": torch.zeros(2)}
      >>> updates, state = opt.update({"w": torch.tensor([0.0, 3.0])}, opt.init(params), params)
      >>> fo.apply_updates(params, updates)["w"]
      tensor([ 0.0000, -0.9487])
    """
    check_range("lr", lr, 0.0, schedule_ok=True)
    check_range("rho", rho, 0.0, 1.0, high_inclusive=True)
    check_range("eps", eps, 0.0)
    check_range("weight_decay", weight_decay, 0.0, schedule_ok=True)
    parts = maximize_part(maximize)
    if not is_zero(weight_decay):
        parts.append(add_decayed_weights(weight_decay))
    parts.append(scale_by_adadelta(rho, eps))
    parts.append(scale_by_learning_rate(lr))
    return chain(*parts)
