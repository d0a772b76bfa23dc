"""``timm.optim.AdamWLegacy`` on the functional engine (``fo.timm.adamw_legacy``)."""

from typing import Optional, Tuple

from torch.optim.optimizer import ParamsT

import functional_optim as fo
from functional_optim.hyperparams import concrete

from ._adabelief import _check_adam_like, _reject
from ..torch_optim import _TorchCompatible


def _max_lr_snapshot(lr, corrected_weight_decay: bool = False) -> float:
    """timm's snapshot of the constructor lr (the max lr of corrected weight decay)."""
    max_lr = concrete(lr)
    max_lr = 0.0 if max_lr is None else max_lr
    _reject(corrected_weight_decay and max_lr <= 0,
            f"Corrected weight decay requires a positive max lr, got {max_lr}. Construct the optimizer with "
            "the peak lr.", "lr must be > 0 with corrected_weight_decay")
    return max_lr


class AdamWLegacy(_TorchCompatible):
    """``timm.optim.AdamWLegacy`` on the functional engine (``fo.timm.adamw_legacy``), with
    timm's signature, checks, group keys (``max_lr_snapshot``) and per-param state
    (``step`` as a float tensor, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``).

    Args:
      params: an iterable of tensors or of param-group dicts.
      lr: learning rate >= 0. Default 1e-3.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.999).
      eps: >= 0. Default 1e-8.
      weight_decay: decoupled decay >= 0. Default 1e-2.
      amsgrad: AMSGrad. Default False.
      caution: Cautious Optimizers' mask. Default False.
      corrected_weight_decay: decay scaled by ``lr**2 / max_lr_snapshot``. Default False.
      maximize: maximize the objective. Default False.
      foreach: accepted and ignored (the engine chooses).
      capturable: must be False (CUDA graphs are not supported: ValueError).
      clipping_threshold: StableAdamW's RMS clip > 0, or None (default).

    Invalid lr, eps or betas raise ValueError with timm's message followed by the rule.
    ``max_lr_snapshot`` is the constructor lr, kept in each group as timm does. For
    compiled steps use ``FunctionalOptimizer(params, fo.timm.adamw_legacy, compile=True, ...)``.

    References:
      Loshchilov & Hutter, *Decoupled Weight Decay Regularization*, 2017, arXiv:1711.05101.

    Example:
      >>> import torch
      >>> from adapters.timm import AdamWLegacy
      >>> w = torch.nn.Parameter(torch.ones(2))
      >>> opt = AdamWLegacy([w], lr=0.1, weight_decay=0.5)
      >>> w.grad = torch.ones(2)
      >>> opt.step()
      >>> w.detach(), opt.state_dict()["state"][0]["step"]
      (tensor([0.8500, 0.8500]), tensor(1.))
    """

    _state_keys = {"step": ("ScaleByAdamState.count",), "exp_avg": ("ScaleByAdamState.mu",),
                   "exp_avg_sq": ("ScaleByAdamState.nu",), "max_exp_avg_sq": ("ScaleByAdamState.nu_max",)}

    def __init__(
            self,
            params: ParamsT,
            lr: float = 1e-3,
            betas: Tuple[float, float] = (0.9, 0.999),
            eps: float = 1e-8,
            weight_decay: float = 1e-2,
            amsgrad: bool = False,
            caution: bool = False,
            corrected_weight_decay: bool = False,
            maximize: bool = False,
            foreach: Optional[bool] = None,
            capturable: bool = False,
            clipping_threshold: Optional[float] = None,
    ):
        _check_adam_like(lr, eps, betas)
        self._setup(params, fo.timm.adamw_legacy, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, caution=caution,
            corrected_weight_decay=corrected_weight_decay,
            max_lr_snapshot=_max_lr_snapshot(lr, corrected_weight_decay), foreach=foreach, maximize=maximize,
            capturable=capturable, clipping_threshold=clipping_threshold), False)
