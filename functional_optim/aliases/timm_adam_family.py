"""timm's Adam-family optimizers with timm's argument names, order and defaults:
AdaBelief, AdamP, SGDP, AdamWLegacy, NAdamLegacy, RAdamLegacy and RMSpropTF
(``fo.timm.<snake_case name>``; ``fo.adabelief``, ``fo.adamp``, ``fo.sgdp`` at top level)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.optimizer import required

from ..base import GradientTransformation, ScalarOrSchedule
from ..combine import chain
from ..hyperparams import check_range, concrete
from ..transforms import add_decayed_weights, scale, scale_by_learning_rate, scale_by_radam, scale_by_rms, trace
from ..transforms.timm_adam import scale_by_belief, scale_by_nadam_legacy, scale_by_timm_adam, trace_from_zero
from ..transforms.weight_decay import add_decoupled_weight_decay
from ..wrappers.caution import cautious
from ..wrappers.projection import scale_invariant_projection
from ._common import is_zero, maximize_part

__all__ = ["adabelief", "adamp", "sgdp", "adamw_legacy", "nadam_legacy", "radam_legacy", "rmsprop_tf"]


def _betas(betas: Any) -> tuple[Any, Any]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for i, beta in enumerate(betas):
        check_range(f"beta parameter at index {i}", beta, 0.0, 1.0)
    return betas[0], betas[1]


def _bools(**flags: Any) -> None:
    for name, flag in flags.items():
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")


def _max_lr(lr: Any, corrected: bool, max_lr_snapshot: Any) -> Any:
    """timm's ``max_lr_snapshot`` for corrected weight decay (None when not corrected)."""
    if not corrected:
        return None
    if max_lr_snapshot is None:
        if callable(lr) and not isinstance(lr, torch.Tensor):
            raise ValueError("corrected_weight_decay with a scheduled lr needs max_lr_snapshot (the peak lr)")
        max_lr_snapshot = lr
    value = concrete(max_lr_snapshot)
    if value is not None and value <= 0:
        raise ValueError(f"Corrected weight decay requires a positive max lr, got {value}. Construct the "
                         "optimizer with the peak lr. (max_lr_snapshot must be > 0)")
    return max_lr_snapshot


def adabelief(lr: ScalarOrSchedule = 1e-3, betas: tuple[Any, Any] = (0.9, 0.999), eps: float | torch.Tensor = 1e-16,
              weight_decay: float | torch.Tensor = 0, amsgrad: bool = False, decoupled_decay: bool = True,
              fixed_decay: bool = False, rectify: bool = True,
              degenerated_to_sgd: bool = True) -> GradientTransformation:
    r"""AdaBelief exactly as ``timm.optim.AdaBelief`` (same names, order and defaults).

    Per param: coupled decay :math:`g \mathrel{+}= \lambda p` unless ``decoupled_decay``;
    AdaBelief's moments and (rectified) step :math:`u` (:func:`~functional_optim.scale_by_belief`);
    :math:`p \leftarrow p - \eta u - s \lambda p` with :math:`s = \eta`, or :math:`s = 1` with
    ``fixed_decay``, when ``decoupled_decay``. That is
    ``chain([add_decayed_weights(wd)], scale_by_belief(...), [add_decayed_weights(wd)],
    scale_by_learning_rate(lr), [add_decoupled_weight_decay(wd, 1.0)])`` (the decay before
    the belief when coupled, after it when decoupled, after the lr when fixed).

    Args:
      lr: learning rate :math:`\eta` >= 0 (number, 0-d tensor or schedule). Default 1e-3.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.999).
      eps: >= 0, added to the belief each step and to the denominator. Default 1e-16.
      weight_decay: :math:`\lambda` >= 0. Default 0.
      amsgrad: AMSGrad on the belief (non-rectified form). Default False.
      decoupled_decay: AdamW-style decay. Default True.
      fixed_decay: with ``decoupled_decay``, ``p *= 1 - weight_decay`` (no lr). Default False.
      rectify: RAdam's rectification. Default True.
      degenerated_to_sgd: SGD steps while the rectification is undefined. Default True.

    References:
      Zhuang et al., *AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed
      Gradients*, NeurIPS 2020, arXiv:2010.07468.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.adabelief(lr=0.1)
      >>> params = {"w": torch.zeros(2)}
      >>> updates, state = opt.update({"w": torch.tensor([1.0, -1.0])}, opt.init(params), params)
      >>> fo.apply_updates(params, updates)["w"]  # rectified, step 1: SGD on m / bc1 = g
      tensor([-0.1000,  0.1000])
    """
    check_range("learning rate", lr, 0.0, schedule_ok=True)
    check_range("epsilon value", eps, 0.0)
    b1, b2 = _betas(betas)
    check_range("weight_decay", weight_decay, 0.0)
    _bools(amsgrad=amsgrad, decoupled_decay=decoupled_decay, fixed_decay=fixed_decay, rectify=rectify,
           degenerated_to_sgd=degenerated_to_sgd)
    decay = [] if is_zero(weight_decay) else [add_decayed_weights(weight_decay)]
    fixed = decoupled_decay and fixed_decay and not is_zero(weight_decay)
    return chain(
        *([] if decoupled_decay else decay),
        scale_by_belief(b1, b2, eps, amsgrad, rectify, degenerated_to_sgd),
        *(decay if decoupled_decay and not fixed_decay else []),  # -lr * (u + wd * p)
        scale_by_learning_rate(lr),
        *([add_decoupled_weight_decay(weight_decay, 1.0)] if fixed else []),  # p *= 1 - wd
    )


def adamp(lr: ScalarOrSchedule = 1e-3, betas: tuple[Any, Any] = (0.9, 0.999), eps: float | torch.Tensor = 1e-8,
          weight_decay: float | torch.Tensor = 0, delta: float | torch.Tensor = 0.1,
          wd_ratio: float | torch.Tensor = 0.1, nesterov: bool = False,
          caution: bool = False) -> GradientTransformation:
    r"""AdamP exactly as ``timm.optim.AdamP`` (same names, order and defaults).

    Adam's step :math:`d = n / (\sqrt{v}/\sqrt{bc_2} + \epsilon) / bc_1` (AdamP's Nesterov
    numerator :math:`\beta_1 m + (1 - \beta_1) g` with ``nesterov``), projected off the
    radial direction of scale-invariant weights, with the decay ratio :math:`r`
    (:func:`~functional_optim.scale_invariant_projection`); then
    :math:`p \leftarrow p - \eta (d + \lambda r p)`. That is
    ``chain(scale_invariant_projection(scale_by_timm_adam(b1, b2, eps, nesterov=nesterov),
    delta, wd_ratio, eps, weight_decay, caution=caution), scale_by_learning_rate(lr))``.

    Args:
      lr: learning rate :math:`\eta` >= 0 (number, 0-d tensor or schedule). Default 1e-3.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.999).
      eps: >= 0, of the denominator, the cosine and the normalisation. Default 1e-8.
      weight_decay: :math:`\lambda` >= 0 (decoupled). Default 0.
      delta: cosine threshold >= 0. Default 0.1.
      wd_ratio: decay ratio of projected params, >= 0. Default 0.1.
      nesterov: Nesterov momentum. Default False.
      caution: spherical / standard caution (timm's ``cadamp``). Default False.

    References:
      Heo et al., *AdamP: Slowing Down the Slowdown for Momentum Optimizers on
      Scale-invariant Weights*, ICLR 2021, arXiv:2006.08217.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.adamp(lr=0.1)
      >>> params = {"b": torch.zeros(2)}
      >>> updates, state = opt.update({"b": torch.tensor([1.0, -1.0])}, opt.init(params), params)
      >>> fo.apply_updates(params, updates)["b"]  # a 1-D param: plain Adam
      tensor([-0.1000,  0.1000])
    """
    check_range("lr", lr, 0.0, schedule_ok=True)
    b1, b2 = _betas(betas)
    check_range("eps", eps, 0.0)
    _bools(nesterov=nesterov, caution=caution)
    return chain(
        scale_invariant_projection(scale_by_timm_adam(b1, b2, eps, nesterov=nesterov), delta, wd_ratio, eps,
                                   weight_decay, caution=caution),
        scale_by_learning_rate(lr),
    )


def sgdp(lr: ScalarOrSchedule = required, momentum: float | torch.Tensor = 0,
         dampening: float | torch.Tensor = 0, weight_decay: float | torch.Tensor = 0, nesterov: bool = False,
         eps: float | torch.Tensor = 1e-8, delta: float | torch.Tensor = 0.1,
         wd_ratio: float | torch.Tensor = 0.1, caution: bool = False) -> GradientTransformation:
    r"""SGDP exactly as ``timm.optim.SGDP`` (same names, order and defaults; ``lr`` required).

    Momentum from a zero buffer :math:`b = \mu b + (1 - \tau) g`, :math:`d = b` (or
    :math:`g + \mu b` with ``nesterov``) (:func:`~functional_optim.trace_from_zero`),
    projected as AdamP's (:func:`~functional_optim.scale_invariant_projection`, ratio
    :math:`r`); then :math:`p \leftarrow p - \eta (d + \lambda r p / (1 - \mu))`.

    Args:
      lr: learning rate :math:`\eta` >= 0 (number, 0-d tensor or schedule), required.
      momentum: :math:`\mu` in [0, 1). Default 0.
      dampening: :math:`\tau`. Default 0.
      weight_decay: :math:`\lambda` >= 0 (decoupled, divided by :math:`1 - \mu`). Default 0.
      nesterov: Nesterov momentum. Default False.
      eps: >= 0, of the cosine and the normalisation. Default 1e-8.
      delta: cosine threshold >= 0. Default 0.1.
      wd_ratio: decay ratio of projected params, >= 0. Default 0.1.
      caution: spherical / standard caution (timm's ``csgdp``). Default False.

    References:
      Heo et al., *AdamP: Slowing Down the Slowdown for Momentum Optimizers on
      Scale-invariant Weights*, ICLR 2021, arXiv:2006.08217.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.sgdp(lr=0.1, momentum=0.9)
      >>> params = {"b": torch.zeros(2)}
      >>> updates, state = opt.update({"b": torch.tensor([1.0, -1.0])}, opt.init(params), params)
      >>> fo.apply_updates(params, updates)["b"]
      tensor([-0.1000,  0.1000])
    """
    if lr is required:
        raise TypeError("sgdp() missing the required argument lr (the learning rate)")
    check_range("lr", lr, 0.0, schedule_ok=True)
    check_range("momentum", momentum, 0.0, 1.0)
    _bools(nesterov=nesterov, caution=caution)
    return chain(
        scale_invariant_projection(trace_from_zero(momentum, dampening, nesterov), delta, wd_ratio, eps,
                                   weight_decay, momentum=momentum, caution=caution),
        scale_by_learning_rate(lr),
    )


def adamw_legacy(lr: ScalarOrSchedule = 1e-3, betas: tuple[Any, Any] = (0.9, 0.999),
                 eps: float | torch.Tensor = 1e-8, weight_decay: float | torch.Tensor = 1e-2,
                 amsgrad: bool = False, caution: bool = False, corrected_weight_decay: bool = False,
                 maximize: bool = False, clipping_threshold: float | torch.Tensor | None = None, *,
                 max_lr_snapshot: float | torch.Tensor | None = None) -> GradientTransformation:
    r"""AdamW exactly as ``timm.optim.AdamWLegacy`` (same names, order and defaults).

    :math:`g \leftarrow -g` with ``maximize``; Adam's step with timm's eps placement,
    AMSGrad and StableAdamW's RMS clip (:func:`~functional_optim.scale_by_timm_adam`),
    masked by ``caution`` (:func:`~functional_optim.cautious`); then
    :math:`p \leftarrow p - \eta u - s \lambda p` with :math:`s = \eta`, or
    :math:`\eta^2 / \eta_{\max}` with ``corrected_weight_decay``
    (:func:`~functional_optim.add_decoupled_weight_decay`, which takes a number or 0-d
    tensor lr, not a schedule).

    Args:
      lr: learning rate :math:`\eta` >= 0 (number, 0-d tensor or schedule). Default 1e-3.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.999).
      eps: added to the denominator, >= 0. Default 1e-8.
      weight_decay: decoupled decay :math:`\lambda` >= 0. Default 1e-2.
      amsgrad: AMSGrad. Default False.
      caution: Cautious Optimizers' mask. Default False.
      corrected_weight_decay: decay scaled by :math:`\eta^2/\eta_{\max}`. Default False.
      maximize: maximize the objective. Default False.
      clipping_threshold: StableAdamW's RMS clip threshold > 0, or None (default).
      max_lr_snapshot: :math:`\eta_{\max}` (keyword only; timm's group key): default the
        ``lr`` given here (the peak lr; required with a scheduled lr).

    References:
      Loshchilov & Hutter, *Decoupled Weight Decay Regularization*, 2017, arXiv:1711.05101.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.timm.adamw_legacy(lr=0.1, weight_decay=0.5)
      >>> params = {"w": torch.ones(2)}
      >>> updates, state = opt.update({"w": torch.ones(2)}, opt.init(params), params)
      >>> fo.apply_updates(params, updates)["w"]  # 1 - 0.1 - 0.1 * 0.5
      tensor([0.8500, 0.8500])
    """
    check_range("learning rate", lr, 0.0, schedule_ok=True)
    check_range("epsilon value", eps, 0.0)
    b1, b2 = _betas(betas)
    check_range("weight_decay", weight_decay, 0.0)
    _bools(amsgrad=amsgrad, caution=caution, corrected_weight_decay=corrected_weight_decay)
    max_lr = _max_lr(lr, corrected_weight_decay, max_lr_snapshot)
    adam = scale_by_timm_adam(b1, b2, eps, amsgrad, clipping_threshold=clipping_threshold)
    decay = not is_zero(weight_decay)
    return chain(
        *maximize_part(maximize),
        cautious(adam) if caution else adam,
        *([add_decayed_weights(weight_decay)] if decay and max_lr is None else []),  # -lr * (u + wd * p)
        scale_by_learning_rate(lr),
        *([add_decoupled_weight_decay(weight_decay, lr, max_learning_rate=max_lr)]
          if decay and max_lr is not None else []),
    )


def nadam_legacy(lr: ScalarOrSchedule = 2e-3, betas: tuple[Any, Any] = (0.9, 0.999),
                 eps: float | torch.Tensor = 1e-8, weight_decay: float | torch.Tensor = 0,
                 schedule_decay: float | torch.Tensor = 4e-3) -> GradientTransformation:
    r"""NAdam exactly as ``timm.optim.NAdamLegacy`` (same names, order and defaults).

    Coupled decay :math:`g \mathrel{+}= \lambda p`; Dozat's NAdam with the warming momentum
    schedule (:func:`~functional_optim.scale_by_nadam_legacy`); :math:`p \leftarrow p - \eta u`.

    Args:
      lr: learning rate :math:`\eta` >= 0 (number, 0-d tensor or schedule). Default 2e-3.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.999).
      eps: added to the denominator, >= 0. Default 1e-8.
      weight_decay: L2 penalty :math:`\lambda` >= 0. Default 0.
      schedule_decay: momentum schedule decay >= 0. Default 4e-3.

    References:
      Dozat, *Incorporating Nesterov Momentum into Adam*, ICLR 2016 workshop.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.timm.nadam_legacy(lr=0.1)
      >>> params = {"w": torch.zeros(1)}
      >>> updates, state = opt.update({"w": torch.ones(1)}, opt.init(params), params)
      >>> updates["w"].abs() > 0.1  # Nesterov's look-ahead weighs the first step up
      tensor([True])
    """
    check_range("learning rate", lr, 0.0, schedule_ok=True)
    b1, b2 = _betas(betas)
    check_range("eps", eps, 0.0)
    check_range("weight_decay", weight_decay, 0.0)
    return chain(
        *([] if is_zero(weight_decay) else [add_decayed_weights(weight_decay)]),
        scale_by_nadam_legacy(b1, b2, eps, schedule_decay),
        scale_by_learning_rate(lr),
    )


# timm switches to the rectified step at rho_t >= 5; scale_by_radam's test is strict: the
# largest double below 5 makes `rho_t > threshold` the same test as `rho_t >= 5`
_RHO_AT_LEAST_5 = math.nextafter(5.0, 0.0)


def radam_legacy(lr: ScalarOrSchedule = 1e-3, betas: tuple[Any, Any] = (0.9, 0.999),
                 eps: float | torch.Tensor = 1e-8, weight_decay: float | torch.Tensor = 0) -> GradientTransformation:
    r"""RAdam as ``timm.optim.RAdamLegacy`` (same names, order and defaults).

    RAdam's rectified step (:func:`~functional_optim.scale_by_radam`, switching at
    :math:`\rho_t \ge 5` as timm) and the decoupled decay
    :math:`p \leftarrow p - \eta (u + \lambda p)`. timm computes this one in float32
    whatever the param dtype (``p.float()``); this alias computes in the param dtype.

    Args:
      lr: learning rate :math:`\eta` >= 0 (number, 0-d tensor or schedule). Default 1e-3.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.999).
      eps: added to :math:`\sqrt{v}`, >= 0. Default 1e-8.
      weight_decay: decoupled decay :math:`\lambda` >= 0. Default 0.

    References:
      Liu et al., *On the Variance of the Adaptive Learning Rate and Beyond*, ICLR 2020,
      arXiv:1908.03265.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.timm.radam_legacy(lr=0.1)
      >>> params = {"w": torch.zeros(2)}
      >>> updates, state = opt.update({"w": torch.tensor([3.0, -3.0])}, opt.init(params), params)
      >>> updates["w"]  # step 1: SGD with momentum, m / bc1 = g
      tensor([-0.3000,  0.3000])
    """
    check_range("lr", lr, 0.0, schedule_ok=True)
    b1, b2 = _betas(betas)
    check_range("eps", eps, 0.0)
    check_range("weight_decay", weight_decay, 0.0)
    return chain(
        scale_by_radam(b1, b2, eps, threshold=_RHO_AT_LEAST_5),
        *([] if is_zero(weight_decay) else [add_decayed_weights(weight_decay)]),
        scale_by_learning_rate(lr),
    )


def rmsprop_tf(lr: ScalarOrSchedule = 1e-2, alpha: float | torch.Tensor = 0.9, eps: float | torch.Tensor = 1e-10,
               weight_decay: float | torch.Tensor = 0, momentum: float | torch.Tensor = 0.0,
               centered: bool = False, decoupled_decay: bool = False, corrected_weight_decay: bool = False,
               lr_in_momentum: bool = True, caution: bool = False, *,
               max_lr_snapshot: float | torch.Tensor | None = None) -> GradientTransformation:
    r"""RMSprop as TensorFlow computes it, exactly as ``timm.optim.RMSpropTF``.

    Coupled decay :math:`g \mathrel{+}= \lambda p` unless ``decoupled_decay``;
    :math:`s = s + (1 - \alpha)(g^2 - s)` with :math:`s_0 = 1`, :math:`\bar g` likewise
    (``centered``, :math:`\bar g_0 = 0`), :math:`a = \sqrt{s - \bar g^2 + \epsilon}`
    (eps inside the root), i.e. :func:`~functional_optim.scale_by_rms` with
    ``initial_scale=1``; then

    * ``momentum > 0`` and ``lr_in_momentum`` (TensorFlow): :math:`b = \mu b + \eta g / a`,
      :math:`p \leftarrow p - b`;
    * ``momentum > 0``: :math:`b = \mu b + g / a`, :math:`p \leftarrow p - \eta b`;
    * otherwise :math:`p \leftarrow p - \eta g / a`;

    with ``caution`` the momentum step is masked (:func:`~functional_optim.cautious` around
    the momentum ``trace``; timm has no caution without momentum), and with
    ``decoupled_decay`` :math:`p \mathrel{-}= s \lambda p`, :math:`s = \eta` or
    :math:`\eta^2/\eta_{\max}` (``corrected_weight_decay``).

    Args:
      lr: learning rate :math:`\eta` >= 0 (number, 0-d tensor or schedule). Default 1e-2.
      alpha: smoothing constant >= 0. Default 0.9.
      eps: added inside the root, >= 0. Default 1e-10.
      weight_decay: :math:`\lambda` >= 0. Default 0.
      momentum: :math:`\mu` >= 0. Default 0.
      centered: normalise by the centered second moment. Default False.
      decoupled_decay: decoupled weight decay. Default False.
      corrected_weight_decay: decoupled decay scaled by :math:`\eta^2/\eta_{\max}`. Default False.
      lr_in_momentum: accumulate the lr in the momentum buffer (TensorFlow). Default True.
      caution: Cautious Optimizers' mask on the momentum step. Default False.
      max_lr_snapshot: :math:`\eta_{\max}` (keyword only; timm's group key): default the
        ``lr`` given here.

    With ``decoupled_decay`` the lr must be a number or 0-d tensor (the decay reads it
    directly, :func:`~functional_optim.add_decoupled_weight_decay`); for a schedule use
    :func:`~functional_optim.inject_hyperparams`.

    References:
      Hinton, *Neural Networks for Machine Learning*, lecture 6e, 2012; Graves, *Generating
      Sequences With Recurrent Neural Networks*, 2013, arXiv:1308.0850.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.timm.rmsprop_tf(lr=0.1, eps=0.0)
      >>> params = {"w": torch.zeros(1)}
      >>> updates, state = opt.update({"w": torch.tensor([2.0])}, opt.init(params), params)
      >>> updates["w"]  # s = 1 + 0.1 * (4 - 1) = 1.3: -0.1 * 2 / sqrt(1.3)
      tensor([-0.1754])
    """
    check_range("learning rate", lr, 0.0, schedule_ok=True)
    check_range("epsilon", eps, 0.0)
    check_range("momentum", momentum, 0.0)
    check_range("weight_decay", weight_decay, 0.0)
    check_range("alpha value", alpha, 0.0, 1.0, high_inclusive=True)
    _bools(centered=centered, decoupled_decay=decoupled_decay, corrected_weight_decay=corrected_weight_decay,
           lr_in_momentum=lr_in_momentum, caution=caution)
    max_lr = _max_lr(lr, corrected_weight_decay, max_lr_snapshot) if decoupled_decay else None
    decay = not is_zero(weight_decay)
    with_momentum = not is_zero(momentum)
    buffer = trace(momentum)
    buffer = cautious(buffer) if caution else buffer
    if not with_momentum:
        steps = [scale_by_learning_rate(lr)]
    elif lr_in_momentum:
        steps = [scale_by_learning_rate(lr, flip_sign=False), buffer, scale(-1.0)]
    else:
        steps = [buffer, scale_by_learning_rate(lr)]
    return chain(
        *([add_decayed_weights(weight_decay)] if decay and not decoupled_decay else []),
        scale_by_rms(alpha, eps, initial_scale=1.0, eps_in_sqrt=True, centered=centered),
        *steps,
        *([add_decoupled_weight_decay(weight_decay, lr, max_learning_rate=max_lr)]
          if decay and decoupled_decay else []),
    )
