"""Adam and AdamW with torch.optim's arguments and numerics."""

from __future__ import annotations

from typing import Any

import torch

from ..base import GradientTransformation, ScalarOrSchedule
from ..combine import chain
from ..hyperparams import check_range, is_schedule
from ..transforms import add_decayed_weights, scale_by_adam, scale_by_learning_rate
from ..transforms.weight_decay import add_decoupled_weight_decay
from ._common import is_zero, maximize_part


def _betas(betas: Any) -> tuple[Any, Any]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for i, beta in enumerate(betas):
        check_range(f"beta parameter at index {i}", beta, 0.0, 1.0)
    return betas[0], betas[1]


def adam(lr: ScalarOrSchedule = 1e-3, betas: tuple[Any, Any] = (0.9, 0.999), eps: float | torch.Tensor = 1e-8,
         weight_decay: ScalarOrSchedule = 0, amsgrad: bool = False, *, maximize: bool = False,
         decoupled_weight_decay: bool = False) -> GradientTransformation:
    """Adam exactly as ``torch.optim.Adam`` (same names, order and defaults).

    Per leaf: ``g = -g`` if maximize; coupled ``g += weight_decay * p`` unless
    ``decoupled_weight_decay``; Adam's moments (:func:`scale_by_adam`, torch's eps
    placement and AMSGrad); decoupled decay adds ``weight_decay * p`` after them;
    update ``-lr * (...)``.

    Args:
      lr: learning rate >= 0: a number, a 0-d tensor, or a schedule ``count -> lr``. Default 1e-3.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.999).
      eps: added to the denominator, >= 0. Default 1e-8.
      weight_decay: >= 0 (number, 0-d tensor or schedule). Default 0.
      amsgrad: use the running maximum of the second moment. Default False.
      maximize: maximize the objective instead of minimizing. Default False.
      decoupled_weight_decay: AdamW-style decay ``p *= 1 - lr * weight_decay``. Default False.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.adam(lr=0.1)
      >>> params = {"w": torch.zeros(2)}
      >>> updates, state = opt.update({"w": torch.ones(2)}, opt.init(params), params)
      >>> fo.apply_updates(params, updates)["w"]
      tensor([-0.1000, -0.1000])
    """
    check_range("lr", lr, 0.0, schedule_ok=True)
    b1, b2 = _betas(betas)
    check_range("eps", eps, 0.0)
    check_range("weight_decay", weight_decay, 0.0, schedule_ok=True)
    if not isinstance(amsgrad, bool):
        raise TypeError(f"amsgrad must be a bool, got {type(amsgrad).__name__}")
    decay = [] if is_zero(weight_decay) else [add_decayed_weights(weight_decay)]
    if decoupled_weight_decay and decay and not (is_schedule(lr) or is_schedule(weight_decay)):
        # torch's p.mul_(1 - lr * weight_decay), rounded as torch rounds it
        return chain(*maximize_part(maximize), scale_by_adam(b1, b2, eps, amsgrad=amsgrad),
                     scale_by_learning_rate(lr), add_decoupled_weight_decay(weight_decay, lr))
    return chain(
        *maximize_part(maximize),
        *([] if decoupled_weight_decay else decay),
        scale_by_adam(b1, b2, eps, amsgrad=amsgrad),
        *(decay if decoupled_weight_decay else []),
        scale_by_learning_rate(lr),
    )


def adamw(lr: ScalarOrSchedule = 1e-3, betas: tuple[Any, Any] = (0.9, 0.999), eps: float | torch.Tensor = 1e-8,
          weight_decay: ScalarOrSchedule = 1e-2, amsgrad: bool = False, *,
          maximize: bool = False) -> GradientTransformation:
    """AdamW exactly as ``torch.optim.AdamW``: Adam with decoupled weight decay.

    Args:
      lr: learning rate >= 0: a number, a 0-d tensor, or a schedule ``count -> lr``. Default 1e-3.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.999).
      eps: added to the denominator, >= 0. Default 1e-8.
      weight_decay: decoupled decay >= 0 (number, 0-d tensor or schedule). Default 1e-2.
      amsgrad: use the running maximum of the second moment. Default False.
      maximize: maximize the objective instead of minimizing. Default False.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.adamw(lr=0.1, weight_decay=0.5)
      >>> params = {"w": torch.ones(2)}
      >>> updates, state = opt.update({"w": torch.ones(2)}, opt.init(params), params)
      >>> fo.apply_updates(params, updates)["w"]
      tensor([0.8500, 0.8500])
    """
    return adam(lr, betas, eps, weight_decay, amsgrad, maximize=maximize, decoupled_weight_decay=True)
