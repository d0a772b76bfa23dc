"""NovoGrad with ``monai.optimizers.Novograd``'s arguments and numerics."""

from __future__ import annotations

from typing import Any

import torch

from ..base import GradientTransformation, ScalarOrSchedule
from ..combine import chain
from ..hyperparams import check_range
from ..transforms import add_decayed_weights, scale, scale_by_learning_rate, trace
from ..transforms.novograd import scale_by_novograd
from ._common import is_zero


def novograd(lr: ScalarOrSchedule = 1e-3, betas: tuple[Any, Any] = (0.9, 0.98), eps: float | torch.Tensor = 1e-8,
             weight_decay: ScalarOrSchedule = 0.0, grad_averaging: bool = False,
             amsgrad: bool = False) -> GradientTransformation:
    r"""NovoGrad exactly as ``monai.optimizers.Novograd`` (same names, order and defaults).

    Per param, with :math:`g_t` its gradient and :math:`p_t` its value:

    .. math::

        d_t &= g_t / (\sqrt{\hat v_t} + \epsilon) + \lambda\, p_t
              \quad (\hat v_t \text{ from } \lVert g_t \rVert^2 \text{, see } \texttt{scale\_by\_novograd}) \\
        d_t &\leftarrow (1 - \beta_1)\, d_t \quad \text{with grad\_averaging} \\
        m_t &= \beta_1 m_{t-1} + d_t, \quad m_0 = 0 \\
        p_{t+1} &= p_t - \eta\, m_t

    i.e. ``chain(scale_by_novograd(b2, eps, amsgrad), add_decayed_weights(weight_decay),
    scale(1 - b1) if grad_averaging, trace(b1), scale_by_learning_rate(lr))``. The weight
    decay is added after the normalisation and goes through the momentum, as in MONAI.

    Args:
      lr: learning rate :math:`\eta` >= 0: a number, a 0-d tensor, or a schedule ``count -> lr``.
        Default 1e-3.
      betas: ``(beta1, beta2)``, each in [0, 1): the momentum and the decay of the
        per-param second moment. Default (0.9, 0.98).
      eps: added to the root of the second moment, >= 0. Default 1e-8.
      weight_decay: :math:`\lambda` >= 0 (number, 0-d tensor or schedule). Default 0.
      grad_averaging: scale the momentum's input by ``1 - beta1``. Default False.
      amsgrad: normalise by the running maximum of the second moment. Default False.

    References:
      Ginsburg et al., *Stochastic Gradient Methods with Layer-wise Adaptive Moments for
      Training of Deep Networks*, 2019, arXiv:1905.11286.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.novograd(lr=0.1)
      >>> params = {"w": torch.zeros(2)}
      >>> updates, state = opt.update({"w": torch.tensor([3.0, 4.0])}, opt.init(params), params)
      >>> fo.apply_updates(params, updates)["w"]  # -0.1 * g / ||g||
      tensor([-0.0600, -0.0800])
    """
    check_range("lr", lr, 0.0, schedule_ok=True)
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    b1, b2 = betas
    for i, beta in enumerate(betas):
        check_range(f"betas[{i}]", beta, 0.0, 1.0)
    check_range("eps", eps, 0.0)
    check_range("weight_decay", weight_decay, 0.0, schedule_ok=True)
    for name, flag in (("grad_averaging", grad_averaging), ("amsgrad", amsgrad)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    return chain(
        scale_by_novograd(b2, eps, amsgrad),
        *([] if is_zero(weight_decay) else [add_decayed_weights(weight_decay)]),
        *([scale(1 - b1)] if grad_averaging else []),
        trace(b1),
        scale_by_learning_rate(lr),
    )
