"""timm's ``MADGRAD``, ``Adafactor`` and ``Adahessian``, with timm's argument names, order,
defaults and numerics (``fo.timm.madgrad``, ``fo.timm.adafactor``, ``fo.timm.adahessian``)."""

from __future__ import annotations

from typing import Any

import torch

from ..base import GradientTransformation
from ..combine import chain
from ..transforms import add_decayed_weights, clip_by_block_rms, ema, scale, scale_by_learning_rate
from ..transforms.adahessian import scale_by_adahessian
from ..transforms.factored import scale_by_factored_rms
from ..transforms.madgrad import scale_by_madgrad
from ..transforms.relative_step import add_relative_step_decayed_weights, scale_by_relative_step_size
from ..wrappers.caution import cautious
from ._common import is_zero, number, reject

__all__ = ["madgrad", "adafactor", "adahessian"]


def _flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def madgrad(lr: float | torch.Tensor = 1e-2, momentum: float | torch.Tensor = 0.9,
            weight_decay: float | torch.Tensor = 0, eps: float | torch.Tensor = 1e-6,
            decoupled_decay: bool = False) -> GradientTransformation:
    r"""MADGRAD exactly as ``timm.optim.MADGRAD`` (same names, order and defaults).

    The whole step is :func:`functional_optim.scale_by_madgrad` (its dual averages carry the
    learning rate): per param at step :math:`t`, with :math:`\ell_t = (\eta + \epsilon)\sqrt t`,

    .. math::

        \nu_t = \nu_{t-1} + \ell_t g^2, \quad s_t = s_{t-1} + \ell_t g, \quad
        z = x_0 - s_t / (\sqrt[3]{\nu_t} + \epsilon), \quad
        p \leftarrow \mu p + (1 - \mu) z \ (z \text{ if } \mu = 0)

    with the weight decay added to :math:`g` (or, with ``decoupled_decay``, the params
    first multiplied by :math:`1 - \eta\lambda`); see :func:`~functional_optim.scale_by_madgrad`.
    timm registers it as ``madgrad`` and ``madgradw`` (``decoupled_decay=True``).

    Args:
      lr: learning rate :math:`\eta` > 0. Default 1e-2.
      momentum: :math:`\mu` in [0, 1). Default 0.9.
      weight_decay: :math:`\lambda` >= 0. Default 0.
      eps: :math:`\epsilon` >= 0. Default 1e-6.
      decoupled_decay: AdamW-style decay of the params. Default False.

    References:
      Defazio & Jelassi, *Adaptivity without Compromise: A Momentumized, Adaptive, Dual
      Averaged Gradient Method for Stochastic Optimization*, 2021, arXiv:2101.11075.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.timm.madgrad(lr=1.0, momentum=0.0)
      >>> params = {"w": torch.zeros(2)}
      >>> u, _ = opt.update({"w": torch.tensor([1.0, 8.0])}, opt.init(params), params)
      >>> fo.apply_updates(params, u)["w"]  # about -g / |g|**(2/3)
      tensor([-1.0000, -2.0000])
    """
    v_mom, v_lr, v_wd, v_eps = (number(n, x) for n, x in (("momentum", momentum), ("lr", lr),
                                                           ("weight_decay", weight_decay), ("eps", eps)))
    reject(v_mom is not None and not 0 <= v_mom < 1, f"Momentum {momentum} must be in the range [0,1]",
            "momentum must be in [0, 1)")
    reject(v_lr is not None and v_lr <= 0, f"Learning rate {lr} must be positive", "lr must be > 0")
    reject(v_wd is not None and v_wd < 0, f"Weight decay {weight_decay} must be non-negative",
            "weight_decay must be >= 0")
    reject(v_eps is not None and v_eps < 0, "Eps must be non-negative", "eps must be >= 0")
    _flag("decoupled_decay", decoupled_decay)
    return scale_by_madgrad(lr, momentum, eps, weight_decay, decoupled_decay)


def adafactor(lr: float | torch.Tensor | None = None, eps: float | torch.Tensor = 1e-30,
              eps_scale: float | torch.Tensor = 1e-3, clip_threshold: float | torch.Tensor = 1.0,
              decay_rate: float | torch.Tensor = -0.8, betas: tuple[Any, Any] | None = None,
              weight_decay: float | torch.Tensor = 0.0, scale_parameter: bool = True, warmup_init: bool = False,
              min_dim_size_to_factor: int = 16, caution: bool = False) -> GradientTransformation:
    r"""Adafactor exactly as ``timm.optim.Adafactor`` (same names, order and defaults).

    Per param at step :math:`t`, in the order the code computes it:

    .. math::

        u &= \text{the update preconditioned by the (factored) second moment of }
             g^2 + \epsilon \text{ with decay } 1 - t^{c}
             \quad (\texttt{scale\_by\_factored\_rms}) \\
        u &\leftarrow u / \max(1, \mathrm{RMS}(u) / d) \quad (\texttt{clip\_by\_block\_rms}) \\
        u &\leftarrow \eta_t u, \quad \eta_t = \min(10^{-6} t \text{ (warmup) or } 10^{-2}, 1/\sqrt t)
             \cdot \max(\epsilon_{scale}, \mathrm{RMS}(p)) \text{ if lr is None, else lr} \\
        m_t &= \mathrm{lerp}(m_{t-1}, u, 1 - \beta_1), \quad u \leftarrow m_t
             \ (\text{masked by } \mathbb{1}[m_t g > 0] \text{ rescaled, with caution}) \\
        p &\leftarrow p - \lambda \eta_t p - u

    i.e. ``chain(scale_by_factored_rms(decay_rate, eps, min_dim_size_to_factor),
    clip_by_block_rms(clip_threshold), scale_by_relative_step_size(lr, eps_scale,
    scale_parameter, warmup_init), [cautious](ema(beta1, debias=False)) if betas,
    add_relative_step_decayed_weights(weight_decay, ...) if weight_decay, scale(-1))``.
    Factored (``exp_avg_sq_row``/``_col``) are params with ``ndim > 2`` whose dims 0 and 1
    exceed ``min_dim_size_to_factor`` (conv weights), else those with ``ndim >= 2`` whose
    last two dims exceed it. Only ``betas[0]`` is used (timm ignores ``betas[1]``); no
    ``betas`` means no first moment. The caution mask compares the momentum with the
    incoming update, which has the gradient's sign (positive scalings only), so it is
    timm's mask. timm registers it as ``adafactor`` and ``cadafactor``
    (``caution=True, betas=(0.9, 0.999)``). ``fo.adafactor`` is ``torch.optim.Adafactor``'s
    (a different algorithm), not this one.

    Args:
      lr: external learning rate >= 0, or None (default): the relative step size.
      eps: added to the squared gradient, >= 0. Default 1e-30.
      eps_scale: smallest param scale of the relative step, >= 0. Default 1e-3.
      clip_threshold: :math:`d` > 0, the largest RMS of the update. Default 1.
      decay_rate: :math:`c` <= 0 of the second-moment decay :math:`1 - t^c`. Default -0.8.
      betas: ``(beta1, beta2)`` with beta1 in [0, 1) for a first moment, or None (default).
      weight_decay: :math:`\lambda` >= 0, scaled by the step size. Default 0.
      scale_parameter: relative step scaled by the param's RMS. Default True.
      warmup_init: relative step warmed up linearly; needs ``lr=None``. Default False.
      min_dim_size_to_factor: int >= 0, see above. Default 16.
      caution: mask the momentum where it disagrees with the gradient (needs ``betas``:
        without a first moment timm applies no mask). Default False.

    References:
      Shazeer & Stern, *Adafactor: Adaptive Learning Rates with Sublinear Memory Cost*,
      2018, arXiv:1804.04235. Liang et al., *Cautious Optimizers*, 2024, arXiv:2411.16085.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.timm.adafactor(lr=0.1, eps=0.0)
      >>> params = {"w": torch.ones(3)}
      >>> u, _ = opt.update({"w": torch.tensor([2.0, -2.0, 2.0])}, opt.init(params), params)
      >>> u["w"]  # at t = 1: -lr * g / |g|
      tensor([-0.1000,  0.1000, -0.1000])
    """
    reject(bool(warmup_init) and lr is not None, "warmup_init requires relative_step=True",
            "warmup_init needs lr=None")
    if lr is not None:
        v_lr = number("lr", lr)
        reject(v_lr is not None and v_lr < 0, f"Invalid learning rate: {lr}", "lr must be >= 0 or None")
    for name, value, low in (("eps", eps, 0.0), ("eps_scale", eps_scale, 0.0), ("weight_decay", weight_decay, 0.0)):
        v = number(name, value)
        reject(v is not None and not v >= low, f"Invalid {name} value: {value}", f"{name} must be >= 0")
    v_clip = number("clip_threshold", clip_threshold)
    reject(v_clip is not None and not v_clip > 0, f"Invalid clip_threshold value: {clip_threshold}",
            "clip_threshold must be > 0")
    v_dr = number("decay_rate", decay_rate)
    reject(v_dr is not None and not v_dr <= 0, f"Invalid decay_rate value: {decay_rate}", "decay_rate must be <= 0")
    beta1 = None
    if betas is not None:
        if not isinstance(betas, (tuple, list)) or len(betas) < 1:
            raise ValueError(f"betas must be None or a pair (beta1, beta2), got {betas!r}")
        beta1 = betas[0]
        if beta1 is not None:
            v_b1 = number("betas[0]", beta1)
            reject(v_b1 is not None and not 0 <= v_b1 < 1, f"Invalid beta parameter at index 0: {beta1}",
                    "betas[0] must be in [0, 1)")
    for name, flag in (("scale_parameter", scale_parameter), ("warmup_init", warmup_init), ("caution", caution)):
        _flag(name, flag)
    if isinstance(min_dim_size_to_factor, bool) or not isinstance(min_dim_size_to_factor, int) \
            or min_dim_size_to_factor < 0:
        raise ValueError(f"min_dim_size_to_factor must be an int >= 0, got {min_dim_size_to_factor!r}")
    step_size = dict(lr=lr, eps_scale=eps_scale, scale_parameter=scale_parameter, warmup_init=warmup_init)
    momentum: list[GradientTransformation] = []
    if beta1 is not None:
        average = ema(beta1, debias=False)
        momentum = [cautious(average) if caution else average]
    return chain(
        scale_by_factored_rms(decay_rate, eps, min_dim_size_to_factor, "timm"),
        clip_by_block_rms(clip_threshold),
        scale_by_relative_step_size(**step_size),
        *momentum,
        *([] if is_zero(weight_decay) else [add_relative_step_decayed_weights(weight_decay, **step_size)]),
        scale(-1.0),
    )


def adahessian(lr: float | torch.Tensor = 0.1, betas: tuple[Any, Any] = (0.9, 0.999),
               eps: float | torch.Tensor = 1e-8, weight_decay: float | torch.Tensor = 0.0,
               hessian_power: float | torch.Tensor = 1.0, update_each: int = 1, n_samples: int = 1,
               avg_conv_kernel: bool = False) -> GradientTransformation:
    r"""AdaHessian exactly as ``timm.optim.Adahessian`` (same names, order and defaults), the
    Hessian-diagonal estimate passed to ``update`` as ``hessian=`` (required).

    ``update(grads, state, params, hessian=h)`` with ``h`` a tree like the grads, e.g.
    Hutchinson's :math:`\frac1n \sum_i z_i \odot (H z_i)` over Rademacher vectors
    :math:`z_i` (``adapters.timm.Adahessian`` draws them as timm does, from its seeded
    generator, and computes the Hessian-vector products with ``torch.autograd.grad``).
    Per param at step :math:`t`:

    .. math::

        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g, \qquad v_t = \beta_2 v_{t-1} + (1 - \beta_2) D^2 \\
        p &\leftarrow p - \eta \Big( \frac{m_t / (1 - \beta_1^t)}{(v_t / (1 - \beta_2^t))^{k/2} + \epsilon}
            + \lambda p \Big)

    with :math:`D` the estimate (refreshed every ``update_each`` steps, kernel-averaged
    :math:`|D|` for 4-D params with ``avg_conv_kernel``); the weight decay is decoupled
    (AdamW-style), as in timm. I.e. ``chain(scale_by_adahessian(...),
    add_decayed_weights(weight_decay), scale_by_learning_rate(lr))``.

    Args:
      lr: learning rate >= 0. Default 0.1.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.999).
      eps: >= 0, added to the power of the second moment. Default 1e-8.
      weight_decay: decoupled weight decay. Default 0.
      hessian_power: :math:`k` in [0, 1]. Default 1.
      update_each: refresh the estimate every this many steps (int >= 1). Default 1.
      n_samples: Rademacher samples per estimate (int >= 1). The pure update does not
        draw them (the estimate is an argument); it is kept for timm's signature and read
        by the class that estimates. Default 1.
      avg_conv_kernel: average :math:`|D|` over the kernel of 4-D params. Default False.

    References:
      Yao et al., *ADAHESSIAN: An Adaptive Second Order Optimizer for Machine Learning*,
      2020, arXiv:2006.00719.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.timm.adahessian(lr=1.0, betas=(0.0, 0.0), eps=0.0)
      >>> params = {"w": torch.zeros(2)}
      >>> u, _ = opt.update({"w": torch.tensor([1.0, -2.0])}, opt.init(params), params,
      ...                   hessian={"w": torch.tensor([4.0, 2.0])})
      >>> u["w"]  # -g / |D|
      tensor([-0.2500,  1.0000])
    """
    v_lr, v_eps, v_hp = number("lr", lr), number("eps", eps), number("hessian_power", hessian_power)
    reject(v_lr is not None and not 0.0 <= v_lr, f"Invalid learning rate: {lr}", "lr must be >= 0")
    reject(v_eps is not None and not 0.0 <= v_eps, f"Invalid epsilon value: {eps}", "eps must be >= 0")
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for i, beta in enumerate(betas):
        v = number(f"betas[{i}]", beta)
        reject(v is not None and not 0.0 <= v < 1.0, f"Invalid beta parameter at index {i}: {beta}",
                f"betas[{i}] must be in [0, 1)")
    reject(v_hp is not None and not 0.0 <= v_hp <= 1.0, f"Invalid Hessian power value: {hessian_power}",
            "hessian_power must be in [0, 1]")
    v_wd = number("weight_decay", weight_decay)
    reject(v_wd is not None and v_wd < 0, f"Invalid weight_decay value: {weight_decay}",
            "weight_decay must be >= 0")
    for name, value in (("update_each", update_each), ("n_samples", n_samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    _flag("avg_conv_kernel", avg_conv_kernel)
    return chain(
        scale_by_adahessian(betas[0], betas[1], eps, hessian_power, update_each, avg_conv_kernel),
        *([] if is_zero(weight_decay) else [add_decayed_weights(weight_decay)]),
        scale_by_learning_rate(lr),
    )
