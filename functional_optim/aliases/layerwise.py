"""Layer-wise trust-ratio optimizers: LAMB and LARS as optax composes them (``fo.optax.lamb``,
``fo.optax.lars``; the top-level ``fo.lamb``/``fo.lars`` are timm's)."""

from __future__ import annotations

from typing import Any

import torch

from ..base import GradientTransformation, ScalarOrSchedule
from ..combine import chain
from ..hyperparams import check_range
from ..transforms import add_decayed_weights, scale_by_adam, scale_by_learning_rate, scale_by_trust_ratio, trace
from ._common import is_zero, maximize_part
from .adam import _betas


def lamb(lr: ScalarOrSchedule = 1e-3, betas: tuple[Any, Any] = (0.9, 0.999), eps: float | torch.Tensor = 1e-6,
         weight_decay: ScalarOrSchedule = 0.0, *, maximize: bool = False) -> GradientTransformation:
    """LAMB (You et al., 2020): Adam's direction plus decoupled weight decay, rescaled per
    param by its trust ratio (optax's ``lamb``).

    Per param: ``r = m_hat / (sqrt(v_hat) + eps) + weight_decay * p`` (Adam's bias-corrected
    moments, :func:`~functional_optim.scale_by_adam`), then
    ``u = -lr * (||p|| / ||r||) * r``, the ratio taken as 1 when either norm is 0
    (:func:`~functional_optim.scale_by_trust_ratio`). Declares ``Needs.PER_PARAM``: the
    adapter runs it on flat buffers (segmented norms).

    Args:
      lr: learning rate >= 0: a number, a 0-d tensor, or a schedule ``count -> lr``. Default 1e-3.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.999).
      eps: added to the denominator, >= 0. Default 1e-6 (the paper's and optax's).
      weight_decay: decoupled decay >= 0 (number, 0-d tensor or schedule), inside the
        trust ratio. Default 0. Exclude params (biases, norms) with param groups.
      maximize: maximize the objective instead of minimizing. Default False.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.optax.lamb(lr=0.1)
      >>> params = {"w": torch.tensor([3.0, 4.0])}
      >>> updates, state = opt.update({"w": torch.tensor([1.0, -1.0])}, opt.init(params), params)
      >>> updates["w"]  # Adam's first step is sign(g); ||p|| / ||sign(g)|| = 5 / sqrt(2)
      tensor([-0.3536,  0.3536])
    """
    check_range("lr", lr, 0.0, schedule_ok=True)
    b1, b2 = _betas(betas)
    check_range("eps", eps, 0.0)
    check_range("weight_decay", weight_decay, 0.0, schedule_ok=True)
    return chain(
        *maximize_part(maximize),
        scale_by_adam(b1, b2, eps),
        *([] if is_zero(weight_decay) else [add_decayed_weights(weight_decay)]),
        scale_by_trust_ratio(),
        scale_by_learning_rate(lr),
    )


def lars(lr: ScalarOrSchedule = 1.0, momentum: float | torch.Tensor = 0.9, weight_decay: ScalarOrSchedule = 0.0,
         trust_coefficient: float | torch.Tensor = 1e-3, eps: float | torch.Tensor = 0.0, nesterov: bool = False, *,
         maximize: bool = False) -> GradientTransformation:
    """LARS (You et al., 2017): SGD with momentum whose per-param step is rescaled by a
    trust ratio (optax's ``lars``).

    Per param: ``g = g + weight_decay * p``; ``g = trust_coefficient * ||p|| / (||g|| + eps) * g``
    (ratio 1 when either norm is 0); ``g = -lr * g``; then momentum
    ``buf = momentum * buf + g`` (the first step sets ``buf = g``, as torch.optim.SGD), the
    update being ``buf`` (or ``g + momentum * buf`` with ``nesterov``). As in optax the
    learning rate is applied before the momentum. Declares ``Needs.PER_PARAM``: the
    adapter runs it on flat buffers (segmented norms).

    Args:
      lr: learning rate >= 0 (number, 0-d tensor or schedule). Default 1.0: the trust
        coefficient already sets the relative step size.
      momentum: momentum factor >= 0 (0: none). Default 0.9.
      weight_decay: L2 penalty >= 0 added before the trust ratio. Default 0.
      trust_coefficient: the ratio's multiplier, >= 0. Default 1e-3.
      eps: added to the gradient norm in the ratio, >= 0. Default 0.
      nesterov: Nesterov momentum. Default False.
      maximize: maximize the objective instead of minimizing. Default False.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.optax.lars(lr=1.0, trust_coefficient=0.1)
      >>> params = {"w": torch.tensor([3.0, 4.0])}
      >>> updates, state = opt.update({"w": torch.tensor([2.0, 0.0])}, opt.init(params), params)
      >>> updates["w"]  # 0.1 * ||p|| / ||g|| = 0.25
      tensor([-0.5000, 0.0000])
    """
    check_range("lr", lr, 0.0, schedule_ok=True)
    check_range("momentum", momentum, 0.0)
    check_range("weight_decay", weight_decay, 0.0, schedule_ok=True)
    check_range("trust_coefficient", trust_coefficient, 0.0)
    check_range("eps", eps, 0.0)
    if not isinstance(nesterov, bool):
        raise TypeError(f"nesterov must be a bool, got {type(nesterov).__name__}")
    return chain(
        *maximize_part(maximize),
        *([] if is_zero(weight_decay) else [add_decayed_weights(weight_decay)]),
        scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps),
        scale_by_learning_rate(lr),
        *([] if is_zero(momentum) else [trace(momentum, nesterov)]),
    )
