"""timm's MARS with timm's argument names, order and defaults (``fo.timm.mars``, ``fo.mars``)."""

from __future__ import annotations

from typing import Any

import optree
import torch

from ..base import GradientTransformation, ScalarOrSchedule
from ..combine import chain
from ..hyperparams import check_number, check_range, is_schedule
from ..transforms import add_decayed_weights, ema, scale_by_learning_rate, scale_by_sign
from ..transforms.mars import mars_gradient_correction
from ..transforms.timm_adam import scale_by_timm_adam
from ..wrappers.caution import cautious
from ..wrappers.partition import partition
from ._common import is_zero
from .timm_adam_family import _betas, _bools

__all__ = ["mars"]

_MARS_TYPES = ("adamw", "lion")


def _scaled(lr: Any, factor: Any) -> Any:
    # lr * lr_1d_factor, as timm's alpha -(lr * lr_1d_factor) (a schedule stays a schedule)
    if is_schedule(lr):
        return lambda count: lr(count) * factor
    return lr if not isinstance(factor, torch.Tensor) and factor == 1 else lr * factor


def mars(lr: ScalarOrSchedule = 3e-3, betas: tuple[Any, Any] = (0.9, 0.99), eps: float | torch.Tensor = 1e-8,
         weight_decay: float | torch.Tensor = 0.0, gamma: float | torch.Tensor = 0.025, mars_type: str = "adamw",
         optimize_1d: bool = False, lr_1d_factor: float | torch.Tensor = 1.0, betas_1d: tuple[Any, Any] | None = None,
         caution: bool = False) -> GradientTransformation:
    r"""MARS exactly as ``timm.optim.Mars`` (same names, order and defaults).

    Params with two or more dims (all params with ``optimize_1d``): MARS's corrected
    gradient :math:`c_t = g_t + \gamma \frac{\beta_1}{1-\beta_1}(g_t - g_{t-1})`, clipped to
    unit norm (:func:`~functional_optim.mars_gradient_correction`), then with
    ``mars_type="adamw"`` Adam's step on :math:`c_t` (:func:`~functional_optim.scale_by_timm_adam`),
    with ``"lion"`` the sign of its momentum :math:`m_t = \beta_1 m_{t-1} + (1-\beta_1) c_t`;
    ``caution`` masks the momentum where it disagrees with :math:`g_t` (for ``"lion"`` the
    sign of the masked momentum: no rescaling survives). Then
    :math:`p \leftarrow p - \eta\,(u + \lambda p)`.

    Other params (timm's fallback): AdamW on :math:`g_t` with ``betas_1d`` and the lr
    :math:`\eta \cdot` ``lr_1d_factor``, masked by ``caution`` likewise; timm still records
    their last gradient (so does this alias: the state matches timm's).

    That is ``partition({"mars": chain([cautious](chain(mars_gradient_correction(gamma, b1),
    scale_by_timm_adam(b1, b2, eps) | ema(b1, debias=False))), [scale_by_sign()],
    add_decayed_weights(wd), scale_by_learning_rate(lr)), "adamw": ...}, by ndim)``.

    Args:
      lr: learning rate :math:`\eta` >= 0 (number, 0-d tensor or schedule). Default 3e-3.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.99).
      eps: added to Adam's denominator, >= 0. Default 1e-8.
      weight_decay: :math:`\lambda` >= 0, added to the update before the lr. Default 0.
      gamma: :math:`\gamma`, the weight of the gradient difference. Default 0.025.
      mars_type: ``"adamw"`` or ``"lion"``. Default ``"adamw"``.
      optimize_1d: MARS also for params with fewer than two dims. Default False.
      lr_1d_factor: lr factor of the AdamW fallback, >= 0. Default 1.
      betas_1d: betas of the AdamW fallback; None (default): ``betas``.
      caution: Cautious Optimizers' mask. Default False.

    References:
      Yuan et al., *MARS: Unleashing the Power of Variance Reduction for Training Large
      Models*, 2024, arXiv:2411.10438.
      Liang et al., *Cautious Optimizers*, 2024, arXiv:2411.16085.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.timm.mars(lr=0.1, mars_type="lion")
      >>> params = {"w": torch.ones(2, 2), "b": torch.zeros(2)}
      >>> grads = {"w": torch.tensor([[3.0, -1.0], [0.0, 2.0]]), "b": torch.tensor([1.0, -1.0])}
      >>> updates, state = opt.update(grads, opt.init(params), params)
      >>> new = fo.apply_updates(params, updates)
      >>> new["w"], new["b"]  # w: lr * sign; b (1-D): AdamW's first step, lr * g / |g|
      (tensor([[0.9000, 1.1000],
              [1.0000, 0.9000]]), tensor([-0.1000,  0.1000]))
    """
    check_range("learning rate", lr, 0.0, schedule_ok=True)
    check_range("epsilon value", eps, 0.0)
    b1, b2 = _betas(betas)
    b1_1d, b2_1d = _betas(betas if betas_1d is None else betas_1d)
    check_range("weight_decay", weight_decay, 0.0)
    check_number("gamma", gamma)
    check_range("lr_1d_factor", lr_1d_factor, 0.0)
    _bools(optimize_1d=optimize_1d, caution=caution)
    if mars_type not in _MARS_TYPES:
        raise ValueError(f"MARS type not supported: mars_type must be one of {_MARS_TYPES}, got {mars_type!r}")

    def tail(rate: Any) -> list[GradientTransformation]:
        decay = [] if is_zero(weight_decay) else [add_decayed_weights(weight_decay)]
        return [*decay, scale_by_learning_rate(rate)]

    moments = scale_by_timm_adam(b1, b2, eps) if mars_type == "adamw" else ema(b1, debias=False)
    corrected = chain(mars_gradient_correction(gamma, b1), moments)
    sign = [scale_by_sign()] if mars_type == "lion" else []
    main = chain(cautious(corrected) if caution else corrected, *sign, *tail(lr))
    if optimize_1d:
        return main
    adam = scale_by_timm_adam(b1_1d, b2_1d, eps)
    fallback = chain(mars_gradient_correction(0.0, b1_1d, max_norm=None),  # records g, as timm
                     cautious(adam) if caution else adam, *tail(_scaled(lr, lr_1d_factor)))
    return partition({"mars": main, "adamw": fallback}, _labels)


def _labels(params: Any) -> Any:
    # MARS for params of two or more dims, timm's AdamW fallback for the others
    return optree.tree_map(lambda p: "mars" if p.dim() >= 2 else "adamw", params)
