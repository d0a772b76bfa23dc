"""RMSprop with torch.optim.RMSprop's arguments and numerics."""

from __future__ import annotations

import torch

from ..base import GradientTransformation, ScalarOrSchedule
from ..combine import chain
from ..hyperparams import check_range
from ..transforms import add_decayed_weights, scale_by_learning_rate, scale_by_rms, trace
from ._common import is_zero, maximize_part


def rmsprop(lr: ScalarOrSchedule = 1e-2, alpha: float | torch.Tensor = 0.99, eps: float | torch.Tensor = 1e-8,
            weight_decay: ScalarOrSchedule = 0, momentum: float | torch.Tensor = 0, centered: bool = False,
            *, maximize: bool = False) -> GradientTransformation:
    """RMSprop exactly as ``torch.optim.RMSprop`` (same names, order and defaults).

    Per leaf: ``g = -g`` if maximize; ``g += weight_decay * p``;
    ``sq = alpha * sq + (1 - alpha) * g**2``; with ``centered``,
    ``ga = lerp(ga, g, 1 - alpha)`` and ``avg = sqrt(sq - ga**2) + eps``, else
    ``avg = sqrt(sq) + eps``; with momentum ``buf = momentum * buf + g / avg`` (zero
    initial buffer) and the update is ``-lr * buf``, else ``-lr * g / avg``.
    No bias correction (torch's defaults; optax's ``rmsprop`` differs: decay 0.9 and eps
    inside the square root, available as :func:`scale_by_rms`).

    Args:
      lr: learning rate >= 0: a number, a 0-d tensor, or a schedule ``count -> lr``. Default 1e-2.
      alpha: smoothing constant, in [0, 1]. Default 0.99.
      eps: added to the denominator outside the square root, >= 0. Default 1e-8.
      weight_decay: L2 penalty >= 0 (number, 0-d tensor or schedule). Default 0.
      momentum: momentum factor >= 0. Default 0.
      centered: normalise by the estimated variance of the gradient. Default False.
      maximize: maximize the objective instead of minimizing. Default False.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.rmsprop(lr=0.01, alpha=0.0, eps=0.0)
      >>> params = {"w": torch.zeros(2)}
      >>> updates, state = opt.update({"w": torch.tensor([2.0, -3.0])}, opt.init(params), params)
      >>> fo.apply_updates(params, updates)["w"]
      tensor([-0.0100,  0.0100])
    """
    check_range("lr", lr, 0.0, schedule_ok=True)
    check_range("alpha", alpha, 0.0, 1.0, high_inclusive=True)
    check_range("eps", eps, 0.0)
    check_range("weight_decay", weight_decay, 0.0, schedule_ok=True)
    check_range("momentum", momentum, 0.0)
    if not isinstance(centered, bool):
        raise TypeError(f"centered must be a bool, got {type(centered).__name__}")
    parts = maximize_part(maximize)
    if not is_zero(weight_decay):
        parts.append(add_decayed_weights(weight_decay))
    parts.append(scale_by_rms(alpha, eps, eps_in_sqrt=False, centered=centered))
    if not is_zero(momentum):
        parts.append(trace(momentum))  # buf = momentum * buf + g / avg, zero initial buffer
    parts.append(scale_by_learning_rate(lr))
    return chain(*parts)
