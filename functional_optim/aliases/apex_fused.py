"""NVIDIA apex's fused optimizers (``apex.optimizers.FusedAdam``, ``FusedLAMB``, ``FusedSGD``,
``FusedNovoGrad``) with apex's argument names, order, defaults and update rules
(``fo.apex.fused_adam``, ...). apex itself is never imported: these run anywhere, and on
the adapter's compiled flat engine."""

from __future__ import annotations

from typing import Any

import torch

from ..base import GradientTransformation
from ..combine import chain
from ..hyperparams import concrete
from ..transforms import add_decayed_weights, scale_by_learning_rate, trace
from ..transforms.apex_fused import scale_by_apex_moments, scale_by_apex_novograd
from ..transforms.layerwise_adaptive import divide_by_global_norm, scale_by_lamb_trust_ratio
from ._common import is_zero, number, reject

__all__ = ["fused_adam", "fused_lamb", "fused_sgd", "fused_novograd"]

Number = float | torch.Tensor


def _at_least(name: str, value: Any, message: str) -> None:
    v = number(name, value)
    reject(v is not None and not v >= 0.0, message.format(v), f"{name} must be >= 0")


def _betas(betas: Any) -> tuple[Any, Any]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for i, beta in enumerate(betas):
        v = number(f"betas[{i}]", beta)
        reject(v is not None and not 0.0 <= v < 1.0, f"Invalid beta parameter at index {i}: {v}",
                f"betas[{i}] must be in [0, 1)")
    return betas[0], betas[1]


def _no_amsgrad(name: str, amsgrad: Any) -> None:
    # apex raises RuntimeError for it; a bad argument is a ValueError here
    if amsgrad:
        raise ValueError(f"{name} does not support the AMSGrad variant (amsgrad must be False)")


def fused_adam(lr: Number = 1e-3, bias_correction: bool = True, betas: tuple[Any, Any] = (0.9, 0.999),
               eps: Number = 1e-8, adam_w_mode: bool = True, weight_decay: Number = 0.0,
               amsgrad: bool = False) -> GradientTransformation:
    r"""Adam/AdamW exactly as ``apex.optimizers.FusedAdam`` computes it (same names, order and
    defaults; apex's flags that only concern CUDA memory are on ``adapters.apex.FusedAdam``).

    Per element, with :math:`t` the tree's step (apex's per-group ``step``):

    .. math::

        g &\leftarrow g + \lambda p \quad \text{(adam\_w\_mode=False)} \\
        m &\leftarrow \beta_1 m + (1-\beta_1) g, \quad v \leftarrow \beta_2 v + (1-\beta_2) g g \\
        u &= (m / b_1) / (\sqrt{v / b_2} + \epsilon) \;[+\, \lambda p \text{ if adam\_w\_mode}],
            \quad b_i = 1 - \beta_i^t \text{ (1 without bias\_correction)} \\
        p &\leftarrow p - \eta u

    i.e. ``chain(scale_by_apex_moments(...), scale_by_learning_rate(lr))``. Elementwise:
    runs on the adapter's flat buffers. timm registers it as ``fusedadam``
    (``adam_w_mode=False``) and ``fusedadamw``.

    Args:
      lr: learning rate :math:`\eta` >= 0. Default 1e-3.
      bias_correction: divide the moments by :math:`1 - \beta_i^t`. Default True.
      betas: :math:`(\beta_1, \beta_2)`, each in [0, 1). Default (0.9, 0.999).
      eps: :math:`\epsilon` >= 0. Default 1e-8.
      adam_w_mode: decoupled weight decay (AdamW) instead of L2. Default True.
      weight_decay: :math:`\lambda` >= 0. Default 0.
      amsgrad: not supported (apex refuses it): must be False. Default False.

    References:
      Kingma & Ba, *Adam: A Method for Stochastic Optimization*, 2014, arXiv:1412.6980.
      Loshchilov & Hutter, *Decoupled Weight Decay Regularization*, 2017, arXiv:1711.05101.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.apex.fused_adam(lr=0.1)
      >>> params = {"w": torch.tensor([1.0, 2.0])}
      >>> u, _ = opt.update({"w": torch.tensor([0.5, -0.5])}, opt.init(params), params)
      >>> u["w"]  # the first step is -lr * sign(g)
      tensor([-0.1000,  0.1000])
    """
    _no_amsgrad("FusedAdam", amsgrad)
    _at_least("lr", lr, "Invalid learning rate: {}")
    _at_least("eps", eps, "Invalid epsilon value: {}")
    _at_least("weight_decay", weight_decay, "Invalid weight_decay value: {}")
    b1, b2 = _betas(betas)
    return chain(scale_by_apex_moments(b1, b2, eps, bias_correction, weight_decay, adam_w_mode),
                 scale_by_learning_rate(lr))


def fused_lamb(lr: Number = 1e-3, bias_correction: bool = True, betas: tuple[Any, Any] = (0.9, 0.999),
               eps: Number = 1e-6, weight_decay: Number = 0.01, amsgrad: bool = False, adam_w_mode: bool = True,
               grad_averaging: bool = True, max_grad_norm: Number = 1.0,
               use_nvlamb: bool = False) -> GradientTransformation:
    r"""LAMB exactly as ``apex.optimizers.FusedLAMB`` computes it (same names, order and defaults).

    Over the whole tree (apex: over every param group), then per param:

    .. math::

        G &= \lVert (\lVert g_i \rVert_2)_i \rVert_2, \quad g \leftarrow g / (G / c \text{ if } G > c
            \text{ else } 1) \\
        u &= \text{FusedAdam's } u \text{ with } \beta_3 = 1 - \beta_1
            \text{ (grad\_averaging) or } 1 \quad \text{(see } \texttt{scale\_by\_apex\_moments}) \\
        \tau &= \lVert p \rVert / \lVert u \rVert \text{ (1 if a norm is 0)} \quad
            \text{if } \lambda \ne 0 \text{ or use\_nvlamb, else } 1 \\
        p &\leftarrow p - \eta \tau u

    i.e. ``chain(divide_by_global_norm(c), scale_by_apex_moments(...),
    [scale_by_lamb_trust_ratio(gate=...)], scale_by_learning_rate(lr))``. Unlike timm's
    ``Lamb``, the L2 mode (``adam_w_mode=False``) adds :math:`\lambda p` to the clipped
    gradient, the decoupled one to the update inside the ratio, and the root is taken of
    the bias-corrected :math:`v`. Declares ``Needs.PER_PARAM`` (segmented norms on flat
    buffers; the global norm is a ``GLOBAL`` reduction).

    Args:
      lr: learning rate :math:`\eta` >= 0. Default 1e-3.
      bias_correction: divide the moments by :math:`1 - \beta_i^t`. Default True.
      betas: :math:`(\beta_1, \beta_2)`, each in [0, 1). Default (0.9, 0.999).
      eps: :math:`\epsilon` >= 0. Default 1e-6.
      weight_decay: :math:`\lambda` >= 0. Default 0.01.
      amsgrad: not supported (apex refuses it): must be False. Default False.
      adam_w_mode: decoupled weight decay instead of L2. Default True.
      grad_averaging: :math:`\beta_3 = 1 - \beta_1` (else 1). Default True.
      max_grad_norm: :math:`c` > 0 of the global-norm clipping. Default 1.0.
        ``update(..., clip_divisor=d)`` divides by a given 0-d ``d`` instead.
      use_nvlamb: apply the trust ratio also where :math:`\lambda = 0`. Default False.

    References:
      You et al., *Large Batch Optimization for Deep Learning: Training BERT in 76 minutes*,
      2020, arXiv:1904.00962.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.apex.fused_lamb(lr=0.1, weight_decay=0.0)
      >>> params = {"w": torch.tensor([3.0, 4.0])}
      >>> u, _ = opt.update({"w": torch.tensor([0.5, -0.5])}, opt.init(params), params)
      >>> u["w"]  # no weight decay: no trust ratio, Adam's first step -lr * sign(g)
      tensor([-0.1000,  0.1000])
    """
    _no_amsgrad("FusedLAMB", amsgrad)
    _at_least("lr", lr, "Invalid learning rate: {}")
    _at_least("eps", eps, "Invalid epsilon value: {}")
    _at_least("weight_decay", weight_decay, "Invalid weight_decay value: {}")
    v = number("max_grad_norm", max_grad_norm)
    reject(v is not None and not v > 0, f"Invalid max_grad_norm: {v}", "max_grad_norm must be > 0")
    if not isinstance(use_nvlamb, bool):
        raise TypeError(f"use_nvlamb must be a bool, got {type(use_nvlamb).__name__}")
    b1, b2 = _betas(betas)
    parts = [divide_by_global_norm(max_grad_norm),
             scale_by_apex_moments(b1, b2, eps, bias_correction, weight_decay, adam_w_mode, grad_averaging)]
    if use_nvlamb or not is_zero(weight_decay):
        # a tensor weight decay gates the ratio where it holds 0 (apex's ``decay != 0``)
        gate = weight_decay if not use_nvlamb and isinstance(weight_decay, torch.Tensor) else None
        parts.append(scale_by_lamb_trust_ratio(gate=gate))
    parts.append(scale_by_learning_rate(lr))
    return chain(*parts)


def fused_sgd(lr: Number, momentum: Number = 0, dampening: Number = 0, weight_decay: Number = 0,
              nesterov: bool = False, wd_after_momentum: bool = False) -> GradientTransformation:
    r"""SGD exactly as ``apex.optimizers.FusedSGD`` computes it (same names, order and
    defaults; ``lr`` is required, as in apex).

    Per element, in this order:

    .. math::

        g &\leftarrow g + \lambda p \quad \text{(unless wd\_after\_momentum)} \\
        b &\leftarrow \mu b + (1 - \delta) g \ (b = g \text{ at a param's first step}), \quad
            g \leftarrow g + \mu b \text{ (nesterov) or } b \qquad (\mu \ne 0) \\
        g &\leftarrow g + \lambda p \quad \text{(wd\_after\_momentum)} \\
        p &\leftarrow p - \eta g

    i.e. torch's SGD (``fo.sgd``) with the option of decaying after the momentum. apex
    decides "first step" once per launch (by the last param of a dtype group); here each
    param's own first step sets its buffer, which is the same whenever the params of a
    group start together.

    Args:
      lr: learning rate :math:`\eta` >= 0 (required).
      momentum: :math:`\mu` >= 0. Default 0.
      dampening: :math:`\delta`. Default 0.
      weight_decay: :math:`\lambda` >= 0. Default 0.
      nesterov: Nesterov momentum; needs momentum > 0 and zero dampening. Default False.
      wd_after_momentum: add :math:`\lambda p` after the momentum. Default False.

    References:
      Sutskever et al., *On the importance of initialization and momentum in deep
      learning*, ICML 2013.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.apex.fused_sgd(0.1, momentum=0.9, weight_decay=0.5, wd_after_momentum=True)
      >>> params = {"w": torch.ones(2)}
      >>> u, _ = opt.update({"w": torch.ones(2)}, opt.init(params), params)
      >>> u["w"]  # -0.1 * (1 + 0.5 * 1)
      tensor([-0.1500, -0.1500])
    """
    _at_least("lr", lr, "Invalid learning rate: {}")
    _at_least("momentum", momentum, "Invalid momentum value: {}")
    _at_least("weight_decay", weight_decay, "Invalid weight_decay value: {}")
    number("dampening", dampening)
    for name, flag in (("nesterov", nesterov), ("wd_after_momentum", wd_after_momentum)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    mom = concrete(momentum)
    if nesterov and ((mom is not None and mom <= 0) or concrete(dampening) not in (0.0, None)):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening "
                         f"(got nesterov=True, momentum={momentum}, dampening={dampening})")
    decay = [] if is_zero(weight_decay) else [add_decayed_weights(weight_decay)]
    parts = [] if wd_after_momentum else list(decay)
    if not is_zero(momentum):
        parts.append(trace(momentum, nesterov, dampening=dampening))
    parts += decay if wd_after_momentum else []
    parts.append(scale_by_learning_rate(lr))
    return chain(*parts)


def fused_novograd(lr: Number = 1e-3, bias_correction: bool = True, betas: tuple[Any, Any] = (0.9, 0.999),
                   eps: Number = 1e-8, weight_decay: Number = 0.0, amsgrad: bool = False,
                   reg_inside_moment: bool = False, grad_averaging: bool = True, norm_type: int = 2,
                   init_zero: bool = False) -> GradientTransformation:
    r"""NovoGrad exactly as ``apex.optimizers.FusedNovoGrad`` computes it (same names, order
    and defaults): a bias-corrected moving average of each param's gradient norm.

    ``chain(scale_by_apex_novograd(...), scale_by_learning_rate(lr))``; see
    :func:`~functional_optim.scale_by_apex_novograd` for the math:

    .. math::

        \nu &\leftarrow \sqrt{\beta_2 \nu^2 + (1-\beta_2) \lVert g \rVert^2}, \quad
            d = \nu / \sqrt{1 - \beta_2^t} + \epsilon \\
        m &\leftarrow \beta_1 m + \beta_3 g, \quad p \leftarrow p - \eta\,((m / (1 - \beta_1^t)) / d + \lambda p)

    This is not timm's ``NvNovoGrad`` (``fo.timm.nvnovograd``): that one averages the
    *squared* norm without bias correction and applies the momentum after normalising.
    timm registers it as ``fusednovograd`` with ``betas=(0.95, 0.98)``.

    Args:
      lr: learning rate :math:`\eta` >= 0. Default 1e-3.
      bias_correction: bias-correct both averages. Default True.
      betas: :math:`(\beta_1, \beta_2)`, each in [0, 1). Default (0.9, 0.999).
      eps: :math:`\epsilon` >= 0. Default 1e-8.
      weight_decay: :math:`\lambda` >= 0. Default 0.
      amsgrad: not supported (apex refuses it): must be False. Default False.
      reg_inside_moment: normalise and decay the gradient before the momentum. Default False.
      grad_averaging: :math:`\beta_3 = 1 - \beta_1` (else 1). Default True.
      norm_type: 2 (L2) or 0 (infinity norm). Default 2.
      init_zero: start the norm average at 0 rather than at the first norm. Default False.

    References:
      Ginsburg et al., *Stochastic Gradient Methods with Layer-wise Adaptive Moments for
      Training of Deep Networks*, 2019, arXiv:1905.11286.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.apex.fused_novograd(lr=0.1, bias_correction=False, eps=0.0)
      >>> params = {"w": torch.zeros(2)}
      >>> u, _ = opt.update({"w": torch.tensor([3.0, 4.0])}, opt.init(params), params)
      >>> u["w"]  # m = 0.1 g, nu = ||g|| = 5: -0.1 * 0.1 * g / 5
      tensor([-0.0060, -0.0080])
    """
    _no_amsgrad("FusedNovoGrad", amsgrad)
    _at_least("lr", lr, "Invalid learning rate: {}")
    _at_least("eps", eps, "Invalid epsilon value: {}")
    _at_least("weight_decay", weight_decay, "Invalid weight_decay value: {}")
    b1, b2 = _betas(betas)
    return chain(scale_by_apex_novograd(b1, b2, eps, bias_correction, weight_decay, grad_averaging,
                                        reg_inside_moment, norm_type, init_zero),
                 scale_by_learning_rate(lr))
