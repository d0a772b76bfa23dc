"""timm's SGDW with timm's argument names, order and defaults (``fo.timm.sgdw``, ``fo.sgdw``)."""

from __future__ import annotations

import torch

from ..base import GradientTransformation, ScalarOrSchedule
from ..combine import chain
from ..hyperparams import check_range, concrete
from ..transforms import add_decayed_weights, scale_by_learning_rate, trace
from ..transforms.weight_decay import add_decoupled_weight_decay
from ..wrappers.caution import cautious
from ._common import is_zero, maximize_part, reject
from .timm_adam_family import _bools, _max_lr

__all__ = ["sgdw"]


def sgdw(lr: ScalarOrSchedule = 1e-3, momentum: float | torch.Tensor = 0.0, dampening: float | torch.Tensor = 0.0,
         weight_decay: float | torch.Tensor = 0.0, nesterov: bool = False, *, caution: bool = False,
         corrected_weight_decay: bool = False, maximize: bool = False,
         max_lr_snapshot: float | torch.Tensor | None = None) -> GradientTransformation:
    r"""SGD with decoupled weight decay exactly as ``timm.optim.SGDW`` (same names, order
    and defaults; timm's ``foreach`` and ``differentiable`` are not arguments here).

    :math:`g \leftarrow -g` with ``maximize``; with momentum :math:`\mu \ne 0`, torch's SGD
    buffer (:func:`~functional_optim.trace`: :math:`b = g` at the first step, then
    :math:`b = \mu b + (1 - \tau) g`; :math:`d = g + \mu b` with ``nesterov``, else
    :math:`b`), masked by ``caution`` (:func:`~functional_optim.cautious`; timm has no
    caution without momentum), else :math:`d = g`; then
    :math:`p \leftarrow p - \eta d - s\lambda p` with :math:`s = \eta`, or
    :math:`\eta^2/\eta_{\max}` with ``corrected_weight_decay``.

    Args:
      lr: learning rate :math:`\eta` >= 0 (number, 0-d tensor or schedule). Default 1e-3.
      momentum: :math:`\mu` >= 0. Default 0.
      dampening: :math:`\tau`. Default 0.
      weight_decay: decoupled decay :math:`\lambda` >= 0. Default 0.
      nesterov: Nesterov momentum (needs momentum > 0 and dampening 0). Default False.
      caution: Cautious Optimizers' mask (keyword only). Default False.
      corrected_weight_decay: decay scaled by :math:`\eta^2/\eta_{\max}` (keyword only). Default False.
      maximize: maximize the objective (keyword only). Default False.
      max_lr_snapshot: :math:`\eta_{\max}` (keyword only; timm's group key): default the
        ``lr`` given here (the peak lr; required with a scheduled lr).

    References:
      Loshchilov & Hutter, *Decoupled Weight Decay Regularization*, 2017, arXiv:1711.05101;
      Liang et al., *Cautious Optimizers*, 2024, arXiv:2411.16085.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.timm.sgdw(lr=0.1, momentum=0.9, weight_decay=0.5)
      >>> params = {"w": torch.ones(2)}
      >>> updates, state = opt.update({"w": torch.ones(2)}, opt.init(params), params)
      >>> fo.apply_updates(params, updates)["w"]  # 1 - 0.1 - 0.1 * 0.5
      tensor([0.8500, 0.8500])
    """
    check_range("lr", lr, 0.0, schedule_ok=True)
    check_range("momentum", momentum, 0.0)
    check_range("weight_decay", weight_decay, 0.0)
    check_range("dampening", dampening, None)
    _bools(nesterov=nesterov, caution=caution, corrected_weight_decay=corrected_weight_decay)
    readable = concrete(momentum)
    reject(nesterov and (readable is not None and readable <= 0 or concrete(dampening) not in (0.0, None)),
           "Nesterov momentum requires a momentum and zero dampening",
           f"nesterov=True needs momentum > 0 and dampening == 0, got momentum={momentum}, dampening={dampening}")
    max_lr = _max_lr(lr, corrected_weight_decay, max_lr_snapshot)
    decay = not is_zero(weight_decay)
    steps = []
    if not is_zero(momentum):
        buffer = trace(momentum, nesterov, dampening=dampening)
        steps.append(cautious(buffer) if caution else buffer)
    return chain(
        *maximize_part(maximize),
        *steps,
        *([add_decayed_weights(weight_decay)] if decay and max_lr is None else []),  # -lr * (d + wd * p)
        scale_by_learning_rate(lr),
        *([add_decoupled_weight_decay(weight_decay, lr, max_learning_rate=max_lr)]
          if decay and max_lr is not None else []),
    )
