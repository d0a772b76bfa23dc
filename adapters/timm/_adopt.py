"""``timm.optim.Adopt`` on the functional engine (``fo.timm.adopt``).

No ``from __future__ import annotations`` here: the signature prints exactly as timm's.
"""

from typing import Optional, Tuple, Union

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

import functional_optim as fo

from ._adabelief import _check_adam_like, _reject
from ._adamw_legacy import _max_lr_snapshot
from ..torch_optim import _TorchCompatible

__all__ = ["Adopt"]


class Adopt(_TorchCompatible):
    """``timm.optim.Adopt`` on the functional engine (``fo.timm.adopt``), with timm's
    signature, checks, group keys (``max_lr_snapshot``) and per-param state (``step`` as a
    float tensor, ``exp_avg``, ``exp_avg_sq``), so checkpoints load both ways.

    Args:
      params: an iterable of tensors or of param-group dicts.
      lr: learning rate >= 0 (a number or one-element tensor). Default 1e-3.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.9999).
      eps: floor of the second moment's root, >= 0. Default 1e-6.
      clip_exp: exponent of the clip bound ``(step - 1) ** clip_exp``, or None. Default 0.333.
      weight_decay: >= 0. Default 0.
      decoupled: decoupled (AdamW-style) decay. Default False.
      corrected_weight_decay: decoupled decay scaled by ``lr**2 / max_lr_snapshot``. Default False.
      caution: Cautious Optimizers' mask. Default False.
      foreach: accepted and ignored (the engine chooses). Default None.
      maximize: maximize the objective. Default False.
      capturable, differentiable: must be False (ValueError; differentiate through steps
        with functional_optim directly).

    Invalid values raise ValueError with timm's message followed by the rule naming the
    argument. A param's first gradient only initialises its second moment (no step, no
    decoupled decay), as timm. The math is ``fo.timm.adopt``'s.

    References:
      Taniguchi et al., *ADOPT: Modified Adam Can Converge with Any beta_2 with the Optimal
      Rate*, NeurIPS 2024, arXiv:2411.02853.

    Example:
      >>> import torch
      >>> from adapters.timm import Adopt
      >>> w = torch.nn.Parameter(torch.ones(2))
      >>> opt = Adopt([w], lr=0.1)
      >>> for _ in range(2):
      ...     w.grad = torch.tensor([2.0, -2.0])
      ...     opt.step()
      >>> w.detach(), opt.state_dict()["state"][0]["step"]
      (tensor([0.9900, 1.0100]), tensor(2.))
    """

    _state_keys = {"step": ("ScaleByAdamState.count",), "exp_avg": ("ScaleByAdamState.mu",),
                   "exp_avg_sq": ("ScaleByAdamState.nu",)}

    def __init__(
            self,
            params: ParamsT,
            lr: Union[float, Tensor] = 1e-3,
            betas: Tuple[float, float] = (0.9, 0.9999),
            eps: float = 1e-6,
            clip_exp: Optional[float] = 0.333,
            weight_decay: float = 0.0,
            decoupled: bool = False,
            corrected_weight_decay: bool = False,
            *,
            caution: bool = False,
            foreach: Optional[bool] = None,
            maximize: bool = False,
            capturable: bool = False,
            differentiable: bool = False,
    ):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element (lr)")
        _check_adam_like(lr, eps, betas)
        _reject(not weight_decay >= 0.0, f"Invalid weight_decay value: {weight_decay}", "weight_decay must be >= 0")
        self._setup(params, fo.timm.adopt, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, clip_exp=clip_exp, decoupled=decoupled,
            corrected_weight_decay=corrected_weight_decay,
            max_lr_snapshot=_max_lr_snapshot(lr, corrected_weight_decay), caution=caution, maximize=maximize,
            foreach=foreach, capturable=capturable, differentiable=differentiable), False)
