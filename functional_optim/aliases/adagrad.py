"""Adagrad with torch.optim.Adagrad's arguments and numerics."""

from __future__ import annotations

import torch

from ..base import GradientTransformation, ScalarOrSchedule
from ..combine import chain
from ..hyperparams import check_range
from ..transforms import add_decayed_weights, scale_by_learning_rate, scale_by_rss
from ._common import is_zero, maximize_part


def adagrad(lr: ScalarOrSchedule = 1e-2, lr_decay: float | torch.Tensor = 0, weight_decay: ScalarOrSchedule = 0,
            initial_accumulator_value: float | torch.Tensor = 0, eps: float | torch.Tensor = 1e-10, *,
            maximize: bool = False) -> GradientTransformation:
    """Adagrad exactly as ``torch.optim.Adagrad`` (same names, order and defaults).

    Per leaf, with ``t`` its own update count: ``g = -g`` if maximize;
    ``g += weight_decay * p``; ``sum = sum + g**2`` (started at
    ``initial_accumulator_value``, per real/imaginary component for complex params);
    update ``-lr / (1 + (t - 1) * lr_decay) * g / (sqrt(sum) + eps)``. torch's
    defaults, not optax's (``initial_accumulator_value=0.1``, ``eps=1e-7`` inside the
    square root: :func:`scale_by_rss`).

    Args:
      lr: learning rate >= 0: a number, a 0-d tensor, or a schedule ``count -> lr``. Default 1e-2.
      lr_decay: learning-rate decay per update, >= 0. Default 0.
      weight_decay: L2 penalty >= 0 (number, 0-d tensor or schedule). Default 0.
      initial_accumulator_value: starting value of the sum of squares, >= 0. Default 0.
      eps: added to the denominator outside the square root, >= 0. Default 1e-10.
      maximize: maximize the objective instead of minimizing. Default False.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.adagrad(lr=0.1)
      >>> params = {"w": torch.zeros(2)}
      >>> updates, state = opt.update({"w": torch.tensor([3.0, -4.0])}, opt.init(params), params)
      >>> fo.apply_updates(params, updates)["w"]
      tensor([-0.1000,  0.1000])
    """
    check_range("lr", lr, 0.0, schedule_ok=True)
    check_range("lr_decay", lr_decay, 0.0)
    check_range("weight_decay", weight_decay, 0.0, schedule_ok=True)
    check_range("initial_accumulator_value", initial_accumulator_value, 0.0)
    check_range("eps", eps, 0.0)
    parts = maximize_part(maximize)
    if not is_zero(weight_decay):
        parts.append(add_decayed_weights(weight_decay))
    parts.append(scale_by_rss(initial_accumulator_value, eps, eps_in_sqrt=False, lr_decay=lr_decay))
    parts.append(scale_by_learning_rate(lr))
    return chain(*parts)
