"""``timm.optim.AdafactorBigVision`` on the functional engine (``fo.timm.adafactor_big_vision``).

No ``from __future__ import annotations`` here: the signature prints exactly as timm's.
"""

from typing import Optional, Union

import torch
from torch.optim.optimizer import ParamsT

import functional_optim as fo
from functional_optim.aliases.timm_adafactor_big_vision import momentum_dtype_of

from ..torch_optim import _TorchCompatible
from ._adamw_legacy import _max_lr_snapshot

__all__ = ["AdafactorBigVision"]


def _bv_group(lr=1.0, min_dim_size_to_factor=16, decay_rate=0.8, decay_offset=0, beta2_cap=0.999, momentum=0.9,
              momentum_dtype=torch.bfloat16, eps=None, weight_decay=0.0, clipping_threshold=None,
              unscaled_wd=False, caution=False, corrected_weight_decay=False, max_lr_snapshot=None):
    """``fo.timm.adafactor_big_vision`` from a param group in timm's keys (the snapshot of the
    constructor lr is the max lr of corrected weight decay)."""
    return fo.timm.adafactor_big_vision(
        lr=lr, min_dim_size_to_factor=min_dim_size_to_factor, decay_rate=decay_rate, decay_offset=decay_offset,
        beta2_cap=beta2_cap, momentum=momentum, momentum_dtype=momentum_dtype, eps=eps, weight_decay=weight_decay,
        clipping_threshold=clipping_threshold, unscaled_wd=unscaled_wd, caution=caution,
        corrected_weight_decay=corrected_weight_decay,
        max_lr_snapshot=max_lr_snapshot if corrected_weight_decay else None)


_COUNTS = ("ScaleByFactoredRmsBigVisionState.count", "EmaState.count")


class AdafactorBigVision(_TorchCompatible):
    """``timm.optim.AdafactorBigVision`` on the functional engine
    (``fo.timm.adafactor_big_vision``), with timm's signature, group keys
    (``momentum_dtype`` as a dtype, ``max_lr_snapshot``) and per-param state (``step`` as a
    float tensor, ``exp_avg_sq_r``/``exp_avg_sq_c`` for factored params or ``exp_avg_sq``,
    and ``exp_avg`` in ``momentum_dtype``), so checkpoints load both ways.

    Args:
      params: an iterable of tensors or of param-group dicts.
      lr: learning rate >= 0. Default 1.0.
      min_dim_size_to_factor: the size the second largest dim must reach to factor. Default 16.
      decay_rate: exponent of the second moment's decay schedule. Default 0.8.
      decay_offset: steps the schedule is delayed by. Default 0.
      beta2_cap: the largest second-moment decay. Default 0.999.
      momentum: the first moment's decay, or None for none. Default 0.9.
      momentum_dtype: the first moment's dtype (or its name). Default ``torch.bfloat16``.
      eps: added to the squared gradient, or None (default) for 1e-30 (1e-7 for float16).
      weight_decay: decoupled decay >= 0. Default 0.
      clipping_threshold: the largest RMS of the preconditioned update, or None (default).
      unscaled_wd: decay not scaled by the lr. Default False.
      caution: Cautious Optimizers' mask on the momentum. Default False.
      corrected_weight_decay: decay scaled by ``lr / max_lr_snapshot``. Default False.

    A momentum loaded from a checkpoint is cast to the group's ``momentum_dtype`` (timm's
    ``__setstate__`` does the same after torch's loader upcast it).

    References:
      Zhai et al., *Scaling Vision Transformers*, 2021, arXiv:2106.04560.

    Example:
      >>> import torch
      >>> from adapters.timm import AdafactorBigVision
      >>> w = torch.nn.Parameter(torch.ones(3))
      >>> opt = AdafactorBigVision([w], lr=0.5, momentum=None, eps=0.0)
      >>> w.grad = torch.tensor([2.0, -2.0, 2.0])
      >>> opt.step()
      >>> w.detach(), list(opt.state_dict()["state"][0])
      (tensor([0.5000, 1.5000, 0.5000]), ['step', 'exp_avg_sq'])
    """

    _state_keys = {"step": _COUNTS, "exp_avg_sq_r": ("ScaleByFactoredRmsBigVisionState.v_row",),
                   "exp_avg_sq_c": ("ScaleByFactoredRmsBigVisionState.v_col",),
                   "exp_avg_sq": ("ScaleByFactoredRmsBigVisionState.v",), "exp_avg": ("EmaState.ema",)}

    def __init__(
            self,
            params: ParamsT,
            lr: float = 1.0,
            min_dim_size_to_factor: int = 16,
            decay_rate: float = 0.8,
            decay_offset: int = 0,
            beta2_cap: float = 0.999,
            momentum: Optional[float] = 0.9,
            momentum_dtype: Union[str, torch.dtype] = torch.bfloat16,
            eps: Optional[float] = None,
            weight_decay: float = 0.0,
            clipping_threshold: Optional[float] = None,
            unscaled_wd: bool = False,
            caution: bool = False,
            corrected_weight_decay: bool = False,
    ):
        momentum_dtype = momentum_dtype_of(momentum_dtype)  # timm keeps the dtype in the group
        arguments = dict(
            lr=lr, min_dim_size_to_factor=min_dim_size_to_factor, decay_rate=decay_rate, decay_offset=decay_offset,
            beta2_cap=beta2_cap, momentum=momentum, momentum_dtype=momentum_dtype, eps=eps,
            weight_decay=weight_decay, clipping_threshold=clipping_threshold, unscaled_wd=unscaled_wd,
            caution=caution, corrected_weight_decay=corrected_weight_decay)
        _bv_group(**arguments)  # every check before any param is looked at
        self._setup(params, _bv_group, dict(
            arguments, max_lr_snapshot=_max_lr_snapshot(lr, corrected_weight_decay)), False)
