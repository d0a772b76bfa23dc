"""Stochastic gradient descent with torch.optim.SGD's arguments and numerics."""

from __future__ import annotations

import torch

from ..base import GradientTransformation, ScalarOrSchedule
from ..combine import chain
from ..hyperparams import check_range, concrete
from ..transforms import add_decayed_weights, scale_by_learning_rate, trace
from ._common import is_zero, maximize_part


def sgd(lr: ScalarOrSchedule = 1e-3, momentum: float | torch.Tensor = 0, dampening: float | torch.Tensor = 0,
        weight_decay: ScalarOrSchedule = 0, nesterov: bool = False, *,
        maximize: bool = False) -> GradientTransformation:
    """SGD with momentum, exactly as ``torch.optim.SGD`` (same names, order and defaults).

    Per leaf: ``g = -g`` if maximize; ``g += weight_decay * p``; with momentum,
    ``buf = momentum * buf + (1 - dampening) * g`` (the first step sets ``buf = g``) and
    ``g = g + momentum * buf`` (nesterov) or ``g = buf``; update ``-lr * g``.

    Args:
      lr: learning rate >= 0: a number, a 0-d tensor, or a schedule ``count -> lr``. Default 1e-3.
      momentum: momentum factor >= 0, a number or 0-d tensor. Default 0. A tensor holding 0
        behaves as torch's (dampening ignored, ``buf = g``) and stays differentiable.
      dampening: dampening for momentum. Default 0.
      weight_decay: L2 penalty >= 0 (number, 0-d tensor or schedule). Default 0.
      nesterov: Nesterov momentum; needs momentum > 0 and dampening == 0. Default False.
      maximize: maximize the objective instead of minimizing. Default False.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.sgd(lr=0.1, momentum=0.9)
      >>> params = {"w": torch.ones(2)}
      >>> state = opt.init(params)
      >>> updates, state = opt.update({"w": torch.ones(2)}, state, params)
      >>> fo.apply_updates(params, updates)["w"]
      tensor([0.9000, 0.9000])
    """
    check_range("lr", lr, 0.0, schedule_ok=True)
    check_range("momentum", momentum, 0.0)
    check_range("dampening", dampening, None)
    check_range("weight_decay", weight_decay, 0.0, schedule_ok=True)
    readable = concrete(momentum)  # None: a tensor not read here (tracing, inject_hyperparams)
    if nesterov and (readable is not None and readable <= 0 or concrete(dampening) not in (0.0, None)):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening "
                         f"(got nesterov=True, momentum={momentum}, dampening={dampening})")
    parts = maximize_part(maximize)
    if not is_zero(weight_decay):
        parts.append(add_decayed_weights(weight_decay))
    if not is_zero(momentum):
        parts.append(trace(momentum, nesterov, dampening=dampening))
    parts.append(scale_by_learning_rate(lr))
    return chain(*parts)
