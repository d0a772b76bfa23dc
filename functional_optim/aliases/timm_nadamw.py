"""timm's NAdamW with timm's argument names, order and defaults (``fo.timm.nadamw``, ``fo.nadamw``)."""

from __future__ import annotations

from typing import Any

import torch

from ..base import GradientTransformation, ScalarOrSchedule
from ..combine import chain
from ..hyperparams import check_range
from ..transforms import add_decayed_weights, scale_by_learning_rate
from ..transforms.timm_adam import scale_by_timm_adam
from ..transforms.weight_decay import add_decoupled_weight_decay
from ..wrappers.caution import cautious
from ._common import is_zero, maximize_part
from .timm_adam_family import _betas, _bools, _max_lr

__all__ = ["nadamw"]


def nadamw(lr: ScalarOrSchedule = 1e-3, betas: tuple[Any, Any] = (0.9, 0.999), eps: float | torch.Tensor = 1e-8,
           weight_decay: float | torch.Tensor = 1e-2, caution: bool = False, corrected_weight_decay: bool = False,
           maximize: bool = False, clipping_threshold: float | torch.Tensor | None = None, *,
           max_lr_snapshot: float | torch.Tensor | None = None) -> GradientTransformation:
    r"""NAdamW exactly as ``timm.optim.NAdamW`` (MLCommons' algorithmic-efficiency form;
    same names, order and defaults; timm's ``foreach`` and ``capturable`` are not arguments here).

    :math:`g \leftarrow -g` with ``maximize``; Adam's moments with the Nesterov numerator
    :math:`n = \operatorname{lerp}(m_t, g, 1 - \beta_1)` and StableAdamW's RMS clip
    (:func:`~functional_optim.scale_by_timm_adam` with ``nesterov=True``: the same math),
    masked by ``caution`` (:func:`~functional_optim.cautious`); then
    :math:`p \leftarrow p - \eta u - s\lambda p` with :math:`s = \eta`, or
    :math:`\eta^2/\eta_{\max}` with ``corrected_weight_decay``
    (:func:`~functional_optim.add_decoupled_weight_decay`, which takes a number or 0-d tensor lr).

    Args:
      lr: learning rate :math:`\eta` >= 0 (number, 0-d tensor or schedule). Default 1e-3.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.999).
      eps: added to the denominator, >= 0. Default 1e-8.
      weight_decay: decoupled decay :math:`\lambda` >= 0. Default 1e-2.
      caution: Cautious Optimizers' mask. Default False.
      corrected_weight_decay: decay scaled by :math:`\eta^2/\eta_{\max}`. Default False.
      maximize: maximize the objective. Default False.
      clipping_threshold: StableAdamW's RMS clip threshold > 0, or None (default).
      max_lr_snapshot: :math:`\eta_{\max}` (keyword only; timm's group key): default the
        ``lr`` given here (the peak lr; required with a scheduled lr).

    References:
      Dozat, *Incorporating Nesterov Momentum into Adam*, ICLR 2016 workshop; Loshchilov &
      Hutter, *Decoupled Weight Decay Regularization*, 2017, arXiv:1711.05101; Dahl et al.,
      *Benchmarking Neural Network Training Algorithms*, 2023, arXiv:2306.07179.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.timm.nadamw(lr=0.1, weight_decay=0.0)
      >>> params = {"w": torch.zeros(2)}
      >>> updates, state = opt.update({"w": torch.tensor([1.0, -1.0])}, opt.init(params), params)
      >>> updates["w"]  # (0.9 m + 0.1 g) / bc1 = 1.9 g at step 1
      tensor([-0.1900,  0.1900])
    """
    check_range("lr", lr, 0.0, schedule_ok=True)
    check_range("eps", eps, 0.0)
    b1, b2 = _betas(betas)
    check_range("weight_decay", weight_decay, 0.0)
    _bools(caution=caution, corrected_weight_decay=corrected_weight_decay)
    max_lr = _max_lr(lr, corrected_weight_decay, max_lr_snapshot)
    adam = scale_by_timm_adam(b1, b2, eps, nesterov=True, clipping_threshold=clipping_threshold)
    decay = not is_zero(weight_decay)
    return chain(
        *maximize_part(maximize),
        cautious(adam) if caution else adam,
        *([add_decayed_weights(weight_decay)] if decay and max_lr is None else []),  # -lr * (u + wd * p)
        scale_by_learning_rate(lr),
        *([add_decoupled_weight_decay(weight_decay, lr, max_learning_rate=max_lr)]
          if decay and max_lr is not None else []),
    )
