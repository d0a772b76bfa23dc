"""timm's layer-wise optimizers: ``Lamb``, ``Lars`` (with LARC) and ``NvNovoGrad``, with
timm's argument names, order, defaults and numerics (``fo.timm.lamb``, ``fo.timm.lars``,
``fo.timm.nvnovograd``)."""

from __future__ import annotations

from typing import Any

import torch

from ..base import GradientTransformation
from ..combine import chain
from ..transforms import add_decayed_weights, scale, scale_by_learning_rate, trace
from ..transforms.layerwise_adaptive import (divide_by_global_norm, scale_by_lamb_moments,
                                             scale_by_lamb_trust_ratio, scale_by_lars_trust_ratio)
from ..transforms.novograd import scale_by_novograd
from ..transforms.weight_decay import add_decoupled_weight_decay, decoupled_decay_rate
from ..wrappers.caution import cautious
from ._common import is_zero, number, reject

__all__ = ["lamb", "lars", "nvnovograd"]

Number = float | torch.Tensor


def _shown(value: Any, v: float | None) -> Any:
    return value if not isinstance(value, torch.Tensor) else v


def _at_least(name: str, value: Any, message: str, low: float = 0.0) -> None:
    v = number(name, value)
    reject(v is not None and not v >= low, message.format(_shown(value, v)), f"{name} must be >= {low:g}")


def _flags(**flags: Any) -> None:
    for name, flag in flags.items():
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")


def _betas(betas: Any) -> tuple[Any, Any]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for i, beta in enumerate(betas):
        v = number(f"betas[{i}]", beta)
        reject(v is not None and not 0.0 <= v < 1.0, f"Invalid beta parameter at index {i}: {_shown(beta, v)}",
                f"betas[{i}] must be in [0, 1)")
    return betas[0], betas[1]


def max_lr_for(lr: Any, corrected_weight_decay: bool, max_lr_snapshot: Any) -> Any:
    """The max lr of timm's corrected weight decay: ``max_lr_snapshot`` if given, else
    ``lr`` (timm snapshots the constructor's lr); must be > 0 when corrected (timm's error).
    """
    max_lr = lr if max_lr_snapshot is None else max_lr_snapshot
    if isinstance(max_lr, torch.Tensor) and max_lr_snapshot is None:
        max_lr = max_lr.detach().clone()  # a snapshot: not differentiated, not changed in place with lr
    v = number("max_lr_snapshot", max_lr)
    reject(corrected_weight_decay and v is not None and v <= 0,
            f"Corrected weight decay requires a positive max lr, got {v}. Construct the optimizer "
            "with the peak lr.", "max_lr_snapshot (or lr) must be > 0 with corrected_weight_decay")
    return max_lr


def _decoupled(weight_decay: Any, lr: Any, decoupled_decay: bool, corrected_weight_decay: bool,
               max_lr: Any) -> list[GradientTransformation]:
    # timm decays the params directly (p *= 1 - r) when decoupled; the term goes last
    if not decoupled_decay or is_zero(weight_decay):
        return []
    return [add_decoupled_weight_decay(weight_decay, lr,
                                       max_learning_rate=max_lr if corrected_weight_decay else None)]


def lamb(lr: Number = 1e-3, bias_correction: bool = True, betas: tuple[Any, Any] = (0.9, 0.999),
         eps: Number = 1e-6, weight_decay: Number = 0.01, grad_averaging: bool = True,
         max_grad_norm: Number | None = 1.0, trust_clip: bool = False, always_adapt: bool = False,
         caution: bool = False, decoupled_decay: bool = False, corrected_weight_decay: bool = False, *,
         max_lr_snapshot: Number | None = None) -> GradientTransformation:
    r"""LAMB exactly as ``timm.optim.Lamb`` (NVIDIA's FusedLAMB / NvLamb variant; same names,
    order and defaults).

    Per step, over the whole tree (timm: over every param group), then per leaf, in the
    order computed:

    .. math::

        g &\leftarrow g / \max(1, \lVert (\lVert g_i \rVert)_i \rVert / c)
            \quad \text{(max\_grad\_norm } c \text{; none if None)} \\
        m &\leftarrow \beta_1 m + \beta_3 g, \quad v \leftarrow \beta_2 v + (1-\beta_2) g^2
            \quad (\beta_3 = 1-\beta_1 \text{ with grad\_averaging, else } 1) \\
        u &= (m / b_1) / (\sqrt{v}/\sqrt{b_2} + \epsilon), \quad b_i = 1 - \beta_i^t
            \text{ (1 without bias\_correction)} \\
        u &\leftarrow u \odot \phi(u, g) \quad \text{with caution (see } \texttt{fo.cautious}) \\
        u &\leftarrow u + \lambda p \quad (\lambda \ne 0 \text{, coupled}); \qquad
            p \leftarrow (1 - r) p,\ r = \eta\lambda \text{ or } \eta^2\lambda/\eta_{\max}
            \quad (\lambda \ne 0 \text{, decoupled}) \\
        u &\leftarrow \tau u, \quad \tau = \lVert p \rVert / \lVert u \rVert
            \text{ (1 if a norm is 0; } \min(\tau, 1) \text{ with trust\_clip)}
            \quad \text{if } \lambda \ne 0 \text{ or always\_adapt} \\
        p &\leftarrow p - \eta u

    i.e. ``chain(divide_by_global_norm(c), [cautious](scale_by_lamb_moments(...)),
    [add_decayed_weights(wd)], [scale_by_lamb_trust_ratio(...)], scale_by_learning_rate(lr),
    [add_decoupled_weight_decay(wd, lr, ...)])``. With ``weight_decay=0`` and
    ``always_adapt=False`` no trust ratio is applied (an Adam-like step), as in timm.
    This differs from :func:`functional_optim.lamb` (optax's composition): that one has no
    gradient clipping, bias-corrects with each leaf's own count, always applies the trust
    ratio (also at zero weight decay), and its weight decay is inside the ratio. Declares
    ``Needs.PER_PARAM`` with a trust ratio (segmented norms on flat buffers).

    Args:
      lr: learning rate :math:`\eta` >= 0, a number or 0-d tensor. Default 1e-3.
      bias_correction: divide the moments by :math:`1-\beta_i^t`. Default True.
      betas: :math:`(\beta_1, \beta_2)`, each in [0, 1). Default (0.9, 0.999).
      eps: :math:`\epsilon` >= 0. Default 1e-6.
      weight_decay: :math:`\lambda` >= 0. Default 0.01.
      grad_averaging: :math:`\beta_3 = 1-\beta_1` (else 1). Default True.
      max_grad_norm: :math:`c` > 0 of the global-norm clipping, or None for none. Default 1.0.
        ``update(..., clip_divisor=d)`` divides by a given 0-d ``d`` instead.
      trust_clip: LAMBC, clip the trust ratio at 1. Default False.
      always_adapt: apply the trust ratio also when ``weight_decay`` is 0. Default False.
      caution: mask the update where its sign disagrees with the gradient (Cautious
        Optimizers, :func:`functional_optim.cautious`). Default False.
      decoupled_decay: decay the params directly instead of adding :math:`\lambda p`. Default False.
      corrected_weight_decay: with ``decoupled_decay``, decay rate :math:`\eta^2\lambda/\eta_{\max}`.
        Default False.
      max_lr_snapshot: :math:`\eta_{\max}` of the corrected decay (timm's group key); None
        (default): ``lr`` at construction, as timm snapshots it.

    References:
      You et al., *Large Batch Optimization for Deep Learning: Training BERT in 76 minutes*,
      2020, arXiv:1904.00962. Liang et al., *Cautious Optimizers*, 2024, arXiv:2411.16085.
      Defazio, *Why Gradients Rapidly Increase Near the End of Training*, 2025, arXiv:2506.02285.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.timm.lamb(lr=0.1, weight_decay=0.0)
      >>> params = {"w": torch.tensor([3.0, 4.0])}
      >>> u, state = opt.update({"w": torch.tensor([0.5, -0.5])}, opt.init(params), params)
      >>> u["w"]  # no weight decay: no trust ratio, Adam's first step -lr * sign(g)
      tensor([-0.1000,  0.1000])
    """
    _at_least("lr", lr, "Invalid learning rate: {}")
    _at_least("eps", eps, "Invalid epsilon: {}")
    _at_least("weight_decay", weight_decay, "Invalid weight_decay: {}")
    _flags(bias_correction=bias_correction, grad_averaging=grad_averaging, trust_clip=trust_clip,
           always_adapt=always_adapt, caution=caution, decoupled_decay=decoupled_decay,
           corrected_weight_decay=corrected_weight_decay)
    max_lr = max_lr_for(lr, corrected_weight_decay, max_lr_snapshot)
    b1, b2 = _betas(betas)
    if max_grad_norm is not None:
        v = number("max_grad_norm", max_grad_norm)
        reject(v is not None and not v > 0, f"Invalid max_grad_norm: {_shown(max_grad_norm, v)}",
                "max_grad_norm must be > 0, or None for no clipping")

    moments = scale_by_lamb_moments(b1, b2, eps, bias_correction, grad_averaging)
    parts = [] if max_grad_norm is None else [divide_by_global_norm(max_grad_norm)]
    parts.append(cautious(moments) if caution else moments)
    decay = not is_zero(weight_decay)
    if decay and not decoupled_decay:
        parts.append(add_decayed_weights(weight_decay))
    if always_adapt or decay:
        rate = None
        if decay and decoupled_decay:  # timm takes the ratio on the decayed params
            corrected = max_lr if corrected_weight_decay else None
            rate = lambda: decoupled_decay_rate(weight_decay, lr, corrected)  # noqa: E731  (current lr)
        gate = None if always_adapt or not isinstance(weight_decay, torch.Tensor) else weight_decay
        parts.append(scale_by_lamb_trust_ratio(trust_clip, param_decay=rate, gate=gate))
    parts.append(scale_by_learning_rate(lr))
    parts += _decoupled(weight_decay, lr, decoupled_decay, corrected_weight_decay, max_lr)
    return chain(*parts)


def lars(lr: Number = 1.0, momentum: Number = 0, dampening: Number = 0, weight_decay: Number = 0,
         nesterov: bool = False, trust_coeff: Number = 0.001, eps: Number = 1e-8, trust_clip: bool = False,
         always_adapt: bool = False) -> GradientTransformation:
    r"""LARS, and LARC with ``trust_clip``, exactly as ``timm.optim.Lars`` (same names, order
    and defaults).

    Per leaf, in the order computed (:math:`w = \lVert p \rVert`, :math:`n = \lVert g \rVert`):

    .. math::

        \tau &= \kappa w / (n + \lambda w + \epsilon) \text{ (1 if } w = 0 \text{ or } n = 0),
            \quad \tau \leftarrow \min(\tau/\eta, 1) \text{ with trust\_clip}
            \qquad \text{if } \lambda \ne 0 \text{ or always\_adapt} \\
        g &\leftarrow (g + \lambda p)\,\tau \qquad \text{(same condition)} \\
        b &\leftarrow \mu b + (1 - \delta) g \quad (b = g \text{ at a param's first step}), \quad
            g \leftarrow g + \mu b \text{ with nesterov, else } b \qquad (\mu \ne 0) \\
        p &\leftarrow p - \eta g

    i.e. ``chain(scale_by_lars_trust_ratio(...), trace(momentum, nesterov, dampening=...),
    scale_by_learning_rate(lr))``: torch.optim.SGD's momentum after the layer-wise rate.
    With ``weight_decay=0`` and ``always_adapt=False`` this is plain SGD (no weight decay,
    no ratio), as in timm. This differs from :func:`functional_optim.lars` (optax's
    composition): there the learning rate is applied before the momentum, the ratio is
    :math:`\kappa w/(\lVert g+\lambda p\rVert + \epsilon)` and always applied, and the
    defaults differ (momentum 0.9, eps 0). Declares ``Needs.PER_PARAM`` with a ratio.

    Args:
      lr: learning rate :math:`\eta` >= 0, a number or 0-d tensor. Default 1.0.
      momentum: :math:`\mu` >= 0 (0: none). Default 0.
      dampening: :math:`\delta` of the momentum. Default 0.
      weight_decay: :math:`\lambda` >= 0. Default 0.
      nesterov: Nesterov momentum (needs momentum > 0 and dampening 0). Default False.
      trust_coeff: :math:`\kappa` >= 0. Default 0.001.
      eps: :math:`\epsilon` >= 0. Default 1e-8.
      trust_clip: LARC: clip :math:`\tau/\eta` at 1. Default False.
      always_adapt: apply the ratio also when ``weight_decay`` is 0. Default False.

    References:
      You, Gitman & Ginsburg, *Large Batch Training of Convolutional Networks*, 2017,
      arXiv:1708.03888.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.timm.lars(lr=0.5, trust_coeff=0.1, eps=0.0, always_adapt=True)
      >>> params = {"w": torch.tensor([3.0, 4.0])}
      >>> u, _ = opt.update({"w": torch.tensor([2.0, 0.0])}, opt.init(params), params)
      >>> u["w"]  # -lr * (0.1 * 5 / 2) * g
      tensor([-0.2500, -0.0000])
    """
    _at_least("lr", lr, "Invalid learning rate: {}")
    _at_least("momentum", momentum, "Invalid momentum value: {}")
    _at_least("weight_decay", weight_decay, "Invalid weight_decay value: {}")
    _flags(nesterov=nesterov, trust_clip=trust_clip, always_adapt=always_adapt)
    m, d = number("momentum", momentum), number("dampening", dampening)
    reject(nesterov and ((m is not None and m <= 0) or (d is not None and d != 0)),
            "Nesterov momentum requires a momentum and zero dampening",
            "nesterov=True needs momentum > 0 and dampening == 0")
    _at_least("trust_coeff", trust_coeff, "Invalid trust_coeff: {}")
    _at_least("eps", eps, "Invalid epsilon value: {}")

    parts = []
    if always_adapt or not is_zero(weight_decay):
        gate = None if always_adapt or not isinstance(weight_decay, torch.Tensor) else weight_decay
        parts.append(scale_by_lars_trust_ratio(trust_coeff, eps, weight_decay, trust_clip, lr, gate=gate))
    if not is_zero(momentum):
        parts.append(trace(momentum, nesterov, dampening=dampening))
    parts.append(scale_by_learning_rate(lr))
    return chain(*parts)


def nvnovograd(lr: Number = 1e-3, betas: tuple[Any, Any] = (0.95, 0.98), eps: Number = 1e-8,
               weight_decay: Number = 0, grad_averaging: bool = False, amsgrad: bool = False,
               decoupled_decay: bool = False, corrected_weight_decay: bool = False, *,
               max_lr_snapshot: Number | None = None) -> GradientTransformation:
    r"""NovoGrad exactly as ``timm.optim.NvNovoGrad`` (NVIDIA's Jasper version; same names,
    order and defaults).

    Per param ("layer"), with :math:`t` its own step:

    .. math::

        n &= \lVert g \rVert_2^2, \quad v \leftarrow n \text{ if } v = 0 \text{ else }
            \beta_2 v + (1-\beta_2) n, \quad \hat v = \max(\hat v, v) \text{ with amsgrad, else } v \\
        u &= g / (\sqrt{\hat v} + \epsilon) \\
        u &\leftarrow u + \lambda p \quad (\lambda \ne 0 \text{, coupled}); \qquad
            p \leftarrow (1 - r) p,\ r = \eta\lambda \text{ or } \eta^2\lambda/\eta_{\max}
            \quad (\lambda \ne 0 \text{, decoupled}) \\
        u &\leftarrow (1 - \beta_1) u \quad \text{with grad\_averaging} \\
        m &\leftarrow \beta_1 m + u, \quad p \leftarrow p - \eta m

    i.e. ``chain(scale_by_novograd(b2, eps, amsgrad), [add_decayed_weights(wd)],
    [scale(1 - b1)], trace(b1), scale_by_learning_rate(lr), [add_decoupled_weight_decay(...)])``:
    :func:`functional_optim.monai.novograd` (MONAI's Novograd, whose math this is) plus
    timm's decoupled and corrected decay and timm's default betas. No bias correction.
    The per-param second moment has the param's dtype, at least float32 (timm keeps it in
    torch's default dtype). Declares ``Needs.PER_PARAM`` (per-param norms, and one scalar
    of state per param: :func:`functional_optim.kernels.param_scalars`).

    Args:
      lr: learning rate :math:`\eta` >= 0, a number or 0-d tensor. Default 1e-3.
      betas: :math:`(\beta_1, \beta_2)`, each in [0, 1). Default (0.95, 0.98).
      eps: :math:`\epsilon` >= 0. Default 1e-8.
      weight_decay: :math:`\lambda` >= 0. Default 0.
      grad_averaging: scale the momentum's input by :math:`1-\beta_1`. Default False.
      amsgrad: normalise by the running maximum of :math:`v`. Default False.
      decoupled_decay: decay the params directly instead of adding :math:`\lambda p`. Default False.
      corrected_weight_decay: with ``decoupled_decay``, decay rate :math:`\eta^2\lambda/\eta_{\max}`.
        Default False.
      max_lr_snapshot: :math:`\eta_{\max}` of the corrected decay (timm's group key); None
        (default): ``lr`` at construction.

    References:
      Ginsburg et al., *Stochastic Gradient Methods with Layer-wise Adaptive Moments for
      Training of Deep Networks*, 2019, arXiv:1905.11286.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.timm.nvnovograd(lr=0.1)
      >>> params = {"w": torch.zeros(2)}
      >>> u, _ = opt.update({"w": torch.tensor([3.0, 4.0])}, opt.init(params), params)
      >>> u["w"]  # -lr * g / ||g||
      tensor([-0.0600, -0.0800])
    """
    _at_least("lr", lr, "Invalid learning rate: {}")
    _at_least("eps", eps, "Invalid epsilon value: {}")
    b1, b2 = _betas(betas)
    _flags(grad_averaging=grad_averaging, amsgrad=amsgrad, decoupled_decay=decoupled_decay,
           corrected_weight_decay=corrected_weight_decay)
    max_lr = max_lr_for(lr, corrected_weight_decay, max_lr_snapshot)
    _at_least("weight_decay", weight_decay, "Invalid weight_decay value: {}")

    parts = [scale_by_novograd(b2, eps, amsgrad)]
    if not decoupled_decay and not is_zero(weight_decay):
        parts.append(add_decayed_weights(weight_decay))
    if grad_averaging:
        parts.append(scale(1 - b1))
    parts += [trace(b1), scale_by_learning_rate(lr)]
    parts += _decoupled(weight_decay, lr, decoupled_decay, corrected_weight_decay, max_lr)
    return chain(*parts)
