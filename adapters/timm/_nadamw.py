"""``timm.optim.NAdamW`` on the functional engine (``fo.timm.nadamw``).

No ``from __future__ import annotations`` here: the signature prints exactly as timm's.
"""

from typing import Optional, Tuple

from torch.optim.optimizer import ParamsT

import functional_optim as fo

from ._adabelief import _check_adam_like, _reject
from ._adamw_legacy import _max_lr_snapshot
from ..torch_optim import _TorchCompatible

__all__ = ["NAdamW"]


class NAdamW(_TorchCompatible):
    """``timm.optim.NAdamW`` on the functional engine (``fo.timm.nadamw``), with timm's
    signature, checks, group keys (``max_lr_snapshot``) and per-param state (``step`` as a
    float tensor, ``exp_avg``, ``exp_avg_sq``), so checkpoints load both ways.

    Args:
      params: an iterable of tensors or of param-group dicts.
      lr: learning rate >= 0. Default 1e-3.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.999).
      eps: >= 0. Default 1e-8.
      weight_decay: decoupled decay >= 0. Default 1e-2.
      caution: Cautious Optimizers' mask. Default False.
      corrected_weight_decay: decay scaled by ``lr**2 / max_lr_snapshot``. Default False.
      maximize: maximize the objective. Default False.
      foreach: accepted and ignored (the engine chooses). Default None.
      capturable: must be False (CUDA graphs are not supported: ValueError).
      clipping_threshold: StableAdamW's RMS clip > 0, or None (default).

    Invalid values raise ValueError with timm's message followed by the rule naming the
    argument. ``max_lr_snapshot`` is the constructor lr, kept in each group as timm does.
    The math is ``fo.timm.nadamw``'s; for compiled steps use
    ``FunctionalOptimizer(params, fo.timm.nadamw, compile=True, ...)``.

    References:
      Dozat, *Incorporating Nesterov Momentum into Adam*, ICLR 2016 workshop; Loshchilov &
      Hutter, *Decoupled Weight Decay Regularization*, 2017, arXiv:1711.05101.

    Example:
      >>> import torch
      >>> from adapters.timm import NAdamW
      >>> w = torch.nn.Parameter(torch.zeros(2))
      >>> opt = NAdamW([w], lr=0.1, weight_decay=0.0)
      >>> w.grad = torch.tensor([1.0, -1.0])
      >>> opt.step()
      >>> w.detach(), opt.state_dict()["state"][0]["step"]
      (tensor([-0.1900,  0.1900]), tensor(1.))
    """

    _state_keys = {"step": ("ScaleByAdamState.count",), "exp_avg": ("ScaleByAdamState.mu",),
                   "exp_avg_sq": ("ScaleByAdamState.nu",)}

    def __init__(
            self,
            params: ParamsT,
            lr: float = 1e-3,
            betas: Tuple[float, float] = (0.9, 0.999),
            eps: float = 1e-8,
            weight_decay: float = 1e-2,
            caution: bool = False,
            corrected_weight_decay: bool = False,
            maximize: bool = False,
            foreach: Optional[bool] = None,
            capturable: bool = False,
            clipping_threshold: Optional[float] = None,
    ):
        _check_adam_like(lr, eps, betas)
        _reject(not weight_decay >= 0.0, f"Invalid weight_decay value: {weight_decay}", "weight_decay must be >= 0")
        self._setup(params, fo.timm.nadamw, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, caution=caution,
            corrected_weight_decay=corrected_weight_decay,
            max_lr_snapshot=_max_lr_snapshot(lr, corrected_weight_decay), foreach=foreach, maximize=maximize,
            capturable=capturable, clipping_threshold=clipping_threshold), False)
