"""timm's Lion with timm's argument names, order and defaults (``fo.timm.lion``, ``fo.lion``)."""

from __future__ import annotations

from typing import Any

import torch

from ..base import GradientTransformation, ScalarOrSchedule
from ..combine import chain
from ..hyperparams import check_range
from ..transforms import scale_by_learning_rate
from ..transforms.lion import scale_by_lion
from ..transforms.weight_decay import add_decoupled_weight_decay
from ..wrappers.caution import cautious
from ._common import is_zero, maximize_part
from .timm_adam_family import _betas, _bools, _max_lr

__all__ = ["lion"]


def lion(lr: ScalarOrSchedule = 1e-4, betas: tuple[Any, Any] = (0.9, 0.99),
         weight_decay: float | torch.Tensor = 0.0, caution: bool = False, corrected_weight_decay: bool = False,
         maximize: bool = False, *, max_lr_snapshot: float | torch.Tensor | None = None) -> GradientTransformation:
    r"""Lion exactly as ``timm.optim.Lion`` (same names, order and defaults).

    Per param, in timm's order: :math:`g \leftarrow -g` with ``maximize``; the params
    shrink, :math:`p \leftarrow p\,(1 - r)` with :math:`r = \eta\lambda`, or
    :math:`r = (\eta^2/\eta_{\max})\lambda` with ``corrected_weight_decay``; then

    .. math::

        u &= \operatorname{sign}(\operatorname{lerp}(m, g, 1 - \beta_1))
             \quad (\text{masked by } \phi = [u \odot g > 0] / \max(\operatorname{mean}\phi, 10^{-3})
             \text{ with caution}) \\
        p &\leftarrow p - \eta\,u, \qquad m \leftarrow \operatorname{lerp}(m, g, 1 - \beta_2)

    That is ``chain([scale(-1)], [cautious](scale_by_lion(b1, b2)), scale_by_learning_rate(lr),
    [add_decoupled_weight_decay(weight_decay, lr, max_learning_rate=...)])``: the decay of
    the params before the step and the step itself add up to the same update.

    Args:
      lr: learning rate :math:`\eta` >= 0 (number, 0-d tensor or schedule; a schedule
        needs ``weight_decay=0``, as the decay takes a number or 0-d tensor). Default 1e-4.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.99).
      weight_decay: decoupled decay :math:`\lambda` >= 0. Default 0.
      caution: Cautious Optimizers' mask on the sign. Default False.
      corrected_weight_decay: decay rate :math:`\eta^2\lambda/\eta_{\max}`. Default False.
      maximize: ascend the objective. Default False.
      max_lr_snapshot: :math:`\eta_{\max}` (keyword only; timm's group key): default the
        ``lr`` given here (the peak lr; required with a scheduled lr).

    References:
      Chen et al., *Symbolic Discovery of Optimization Algorithms*, 2023, arXiv:2302.06675.
      Liang et al., *Cautious Optimizers*, 2024, arXiv:2411.16085.
      Defazio, *Why Gradients Rapidly Increase Near the End of Training*, 2025, arXiv:2506.02285.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.timm.lion(lr=0.1, weight_decay=0.5)
      >>> params = {"w": torch.tensor([1.0, 2.0])}
      >>> updates, state = opt.update({"w": torch.tensor([3.0, -1.0])}, opt.init(params), params)
      >>> fo.apply_updates(params, updates)["w"]  # p (1 - 0.05) - 0.1 sign(g)
      tensor([0.8500, 2.0000])
    """
    check_range("learning rate", lr, 0.0, schedule_ok=True)
    b1, b2 = _betas(betas)
    check_range("weight_decay", weight_decay, 0.0)
    _bools(caution=caution, corrected_weight_decay=corrected_weight_decay)
    max_lr = _max_lr(lr, corrected_weight_decay, max_lr_snapshot)
    sign = scale_by_lion(b1, b2)
    decay = [] if is_zero(weight_decay) else [add_decoupled_weight_decay(weight_decay, lr, max_learning_rate=max_lr)]
    return chain(*maximize_part(maximize), cautious(sign) if caution else sign, scale_by_learning_rate(lr), *decay)
