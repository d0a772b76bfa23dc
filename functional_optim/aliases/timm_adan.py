"""timm's Adan with timm's argument names, order and defaults (``fo.timm.adan``, ``fo.adan``)."""

from __future__ import annotations

from typing import Any

import torch

from ..base import GradientTransformation
from ..combine import chain
from ..hyperparams import check_range
from ..transforms import scale_by_learning_rate
from ..transforms.adan import scale_by_adan
from ..transforms.weight_decay import add_decoupled_weight_decay, add_proximal_weight_decay
from ._common import is_zero
from .timm_adam_family import _bools

__all__ = ["adan"]


def adan(lr: float | torch.Tensor = 1e-3, betas: tuple[Any, Any, Any] = (0.98, 0.92, 0.99),
         eps: float | torch.Tensor = 1e-8, weight_decay: float | torch.Tensor = 0.0, no_prox: bool = False,
         caution: bool = False) -> GradientTransformation:
    r"""Adan exactly as ``timm.optim.Adan`` (same names, order and defaults; timm's
    ``foreach`` is not an argument here).

    Adan's direction :math:`u` (:func:`~functional_optim.scale_by_adan`: the gradient, its
    difference and the Nesterov second moment, bias-corrected with the tree's common step,
    the caution mask on the first-moment term), then with :math:`r = \eta\lambda`:

    * ``no_prox=False`` (timm's ``adan``): :math:`p \leftarrow (p - \eta u) / (1 + r)`
      (:func:`~functional_optim.add_proximal_weight_decay`);
    * ``no_prox=True`` (``adanw``): :math:`p \leftarrow p (1 - r) - \eta u`
      (:func:`~functional_optim.add_decoupled_weight_decay`).

    Args:
      lr: learning rate :math:`\eta` >= 0, a number or 0-d tensor. Default 1e-3.
      betas: ``(beta1, beta2, beta3)``, each in [0, 1). Default (0.98, 0.92, 0.99).
      eps: added to the denominator, >= 0. Default 1e-8.
      weight_decay: :math:`\lambda` >= 0. Default 0.
      no_prox: decay the params directly instead of the proximal division. Default False.
      caution: Cautious Optimizers' mask (timm's ``cadan``/``cadanw``). Default False.

    References:
      Xie et al., *Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep
      Models*, 2022, arXiv:2208.06677.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.timm.adan(lr=0.1, weight_decay=0.25)
      >>> params = {"w": torch.ones(2)}
      >>> updates, state = opt.update({"w": torch.tensor([3.0, -3.0])}, opt.init(params), params)
      >>> fo.apply_updates(params, updates)["w"]  # (1 -+ 0.1) / (1 + 0.025)
      tensor([0.8780, 1.0732])
    """
    check_range("lr", lr, 0.0)
    check_range("eps", eps, 0.0)
    if not isinstance(betas, (tuple, list)) or len(betas) != 3:
        raise ValueError(f"betas must be a triple (beta1, beta2, beta3), got {betas!r}")
    for i, beta in enumerate(betas):
        check_range(f"beta parameter at index {i}", beta, 0.0, 1.0)
    check_range("weight_decay", weight_decay, 0.0)
    _bools(no_prox=no_prox, caution=caution)
    decay = []
    if not is_zero(weight_decay):
        decay = [(add_decoupled_weight_decay if no_prox else add_proximal_weight_decay)(weight_decay, lr)]
    return chain(scale_by_adan(*betas, eps, caution=caution), scale_by_learning_rate(lr), *decay)
