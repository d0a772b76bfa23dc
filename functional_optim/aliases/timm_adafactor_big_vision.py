"""timm's ``AdafactorBigVision`` with timm's argument names, order, defaults and numerics
(``fo.timm.adafactor_big_vision``)."""

from __future__ import annotations

import torch

from ..base import GradientTransformation, ScalarOrSchedule
from ..combine import chain
from ..hyperparams import check_range
from ..transforms import clip_by_block_rms, scale_by_learning_rate
from ..transforms.factored_big_vision import ema_in_dtype, scale_by_factored_rms_big_vision
from ..transforms.weight_decay import add_decoupled_weight_decay
from ..wrappers.caution import cautious
from ._common import is_zero
from .timm_adam_family import _bools, _max_lr

__all__ = ["adafactor_big_vision", "momentum_dtype_of"]

_DTYPE_NAMES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def momentum_dtype_of(momentum_dtype: str | torch.dtype) -> torch.dtype:
    """timm's ``momentum_dtype`` argument as a dtype (``"float16"``, ``"bfloat16"``,
    ``"float32"`` or a floating ``torch.dtype``).

    Example:
      >>> from functional_optim.aliases.timm_adafactor_big_vision import momentum_dtype_of
      >>> momentum_dtype_of("bfloat16")
      torch.bfloat16
    """
    if isinstance(momentum_dtype, str):
        if momentum_dtype not in _DTYPE_NAMES:
            raise ValueError(f"{momentum_dtype} dtype not supported (momentum_dtype must be one of "
                             f"{sorted(_DTYPE_NAMES)} or a floating torch.dtype)")
        return _DTYPE_NAMES[momentum_dtype]
    if not (isinstance(momentum_dtype, torch.dtype) and momentum_dtype.is_floating_point):
        raise TypeError(f"momentum_dtype must be a floating torch.dtype or its name, got {momentum_dtype!r}")
    return momentum_dtype


def adafactor_big_vision(lr: ScalarOrSchedule = 1.0, min_dim_size_to_factor: int = 16,
                         decay_rate: float | torch.Tensor = 0.8, decay_offset: int = 0,
                         beta2_cap: float | torch.Tensor = 0.999, momentum: float | torch.Tensor | None = 0.9,
                         momentum_dtype: str | torch.dtype = torch.bfloat16, eps: float | torch.Tensor | None = None,
                         weight_decay: float | torch.Tensor = 0.0,
                         clipping_threshold: float | torch.Tensor | None = None,
                         unscaled_wd: bool = False, caution: bool = False, corrected_weight_decay: bool = False, *,
                         max_lr_snapshot: float | torch.Tensor | None = None) -> GradientTransformation:
    r"""Adafactor (Big Vision variant) exactly as ``timm.optim.AdafactorBigVision`` (same
    names, order and defaults).

    Per param at step :math:`t`, in the order the code computes it:

    .. math::

        u &= \text{the update preconditioned by Big Vision's factored second moment of }
             g^2 + \epsilon \quad (\texttt{scale\_by\_factored\_rms\_big\_vision}) \\
        u &\leftarrow u / \max(1, \mathrm{RMS}(u) / d) \text{ with clipping\_threshold } d
             \quad (\texttt{clip\_by\_block\_rms}) \\
        m_t &= \mathrm{lerp}(m_{t-1}, u, 1 - \mu) \text{ kept in momentum\_dtype}, \quad
             u \leftarrow m_t \ (\text{masked by } \mathbb{1}[m_t g > 0] \text{ rescaled, with caution})
             \quad (\texttt{ema\_in\_dtype}) \\
        p &\leftarrow p\,(1 - r) - \eta\, u

    with :math:`r = \eta\lambda` (or :math:`\lambda` with ``unscaled_wd``), times
    :math:`\eta / \eta_{\max}` with ``corrected_weight_decay``. ``momentum=None`` keeps no
    first moment (and applies no caution, as timm). timm registers it as ``adafactorbv``,
    ``cadafactorbv`` (caution), ``adafactorbvc`` (corrected decay) and ``cadafactorbvc``.
    The momentum is bfloat16 by default, rounded as timm rounds it (bit for bit).

    Args:
      lr: :math:`\eta` >= 0 (number, 0-d tensor or schedule). Default 1.0.
      min_dim_size_to_factor: int >= 0, see :func:`~functional_optim.big_vision_factor_dims`. Default 16.
      decay_rate: :math:`c` >= 0 of :math:`\beta_{2,t} = 1 - \max(t - t_0, 1)^{-c}`. Default 0.8.
      decay_offset: :math:`t_0`, an int >= 0. Default 0.
      beta2_cap: the largest :math:`\beta_{2,t}`, in [0, 1]. Default 0.999.
      momentum: :math:`\mu` in [0, 1], or None for no first moment. Default 0.9.
      momentum_dtype: the momentum's dtype, a floating ``torch.dtype`` or ``"float16"``,
        ``"bfloat16"``, ``"float32"``. Default ``torch.bfloat16``.
      eps: added to :math:`g^2`, >= 0, or None (default): 1e-7 for float16 grads, else 1e-30.
      weight_decay: :math:`\lambda` >= 0. Default 0.
      clipping_threshold: the largest RMS :math:`d` > 0 of the preconditioned update, or
        None (default) for no clipping.
      unscaled_wd: decay not scaled by the lr (Big Vision's). Default False.
      caution: Cautious Optimizers' mask on the momentum. Default False.
      corrected_weight_decay: decay scaled by :math:`\eta / \eta_{\max}`. Default False.
      max_lr_snapshot: :math:`\eta_{\max}` (keyword only; timm's group key): default the
        ``lr`` given here (required with a scheduled lr).

    References:
      Zhai et al., *Scaling Vision Transformers*, 2021, arXiv:2106.04560. Liang et al.,
      *Cautious Optimizers*, 2024, arXiv:2411.16085. Defazio, *Why Gradients Rapidly
      Increase Near the End of Training*, 2025, arXiv:2506.02285.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.timm.adafactor_big_vision(lr=0.5, momentum=None, eps=0.0)
      >>> params = {"w": torch.ones(3)}
      >>> u, _ = opt.update({"w": torch.tensor([2.0, -2.0, 2.0])}, opt.init(params), params)
      >>> u["w"]  # at t = 1: -lr * g / |g|
      tensor([-0.5000,  0.5000, -0.5000])
    """
    check_range("learning rate", lr, 0.0, schedule_ok=True)
    check_range("weight_decay", weight_decay, 0.0)
    _bools(unscaled_wd=unscaled_wd, caution=caution, corrected_weight_decay=corrected_weight_decay)
    dtype = momentum_dtype_of(momentum_dtype)
    if momentum is not None:
        check_range("momentum", momentum, 0.0, 1.0, high_inclusive=True)
    max_lr = _max_lr(lr, corrected_weight_decay, max_lr_snapshot)
    average: list[GradientTransformation] = []
    if momentum is not None:
        moment = ema_in_dtype(momentum, dtype)
        average = [cautious(moment) if caution else moment]
    return chain(
        scale_by_factored_rms_big_vision(decay_rate, decay_offset, beta2_cap, eps, min_dim_size_to_factor),
        *([] if clipping_threshold is None else [clip_by_block_rms(clipping_threshold)]),
        *average,
        scale_by_learning_rate(lr),
        *([] if is_zero(weight_decay) else [add_decoupled_weight_decay(
            weight_decay, lr, max_learning_rate=max_lr, unscaled=unscaled_wd)]),
    )
