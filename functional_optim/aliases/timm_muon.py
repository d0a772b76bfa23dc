"""timm's ``Muon`` (and AdaMuon) with timm's argument names, order, defaults and numerics
(``fo.timm.muon``; ``fo.muon`` is torch.optim's Muon, a different algorithm)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import optree
import torch

from ..base import GradientTransformation
from ..combine import chain
from ..hyperparams import check_range
from ..transforms import ema, scale, scale_by_learning_rate
from ..transforms.muon_scaling import scale_by_adamuon, scale_by_muon_shape
from ..transforms.newton_schulz_timm import muon_suitable, orthogonalize_newton_schulz_timm
from ..transforms.timm_adam import scale_by_timm_adam
from ..transforms.weight_decay import add_decoupled_weight_decay
from ..wrappers.partition import partition
from ._common import is_zero
from .timm_adam_family import _betas, _bools

__all__ = ["muon", "muon_labels"]

ALGOS = ("muon", "adamuon")


def muon_labels(use_fallback: bool | None = None, use_muon: bool | None = None):
    """The routing of ``fo.timm.muon``: a function ``params -> labels`` giving each leaf
    ``"muon"`` or ``"fallback"`` as timm does for one param group: all ``"fallback"`` with
    ``use_fallback``, else all by ``use_muon`` when it is given, else by shape
    (:func:`~functional_optim.transforms.newton_schulz_timm.muon_suitable`).

    Example:
      >>> import torch
      >>> from functional_optim.aliases.timm_muon import muon_labels
      >>> muon_labels()({"w": torch.zeros(8, 8), "b": torch.zeros(8)})
      {'w': 'muon', 'b': 'fallback'}
    """
    def label(p: Any) -> str:
        if use_fallback:
            return "fallback"
        if use_muon is not None:
            return "muon" if use_muon else "fallback"
        return "muon" if p is not None and muon_suitable(tuple(p.shape)) else "fallback"

    def labels(params: Any) -> Any:
        return optree.tree_map(label, params, none_is_leaf=True)

    return labels


def _fallback_scale(lr: Any, adamw_lr: Any, fallback_lr_scale: Any) -> Any:
    # timm's deprecated adamw_lr, turned into the scale of the fallback's lr
    if adamw_lr is None:
        return fallback_lr_scale
    warnings.warn("adamw_lr is deprecated, use fallback_lr_scale=adamw_lr/lr instead. adamw_lr will be removed "
                  "in a future release.", FutureWarning, stacklevel=3)
    if isinstance(lr, torch.Tensor):
        raise ValueError("adamw_lr is not supported with tensor lr; use fallback_lr_scale instead.")
    if lr == 0:
        raise ValueError("Cannot compute fallback_lr_scale from adamw_lr when lr=0")
    return adamw_lr / lr


def muon(lr: float | torch.Tensor = 0.02, weight_decay: float | torch.Tensor = 0,
         momentum: float | torch.Tensor = 0.95, nesterov: bool = False, ns_steps: int = 5,
         ns_coefficients: str | Sequence[Any] = "quintic", eps: float | torch.Tensor = 1e-7,
         safety_factor: float = 1.0, adjust_lr_fn: str | None = "match_rms_adamw", conv_mode: str = "flatten",
         normalize_spatial: bool = True, adamw_lr: float | None = None,
         fallback_lr_scale: float | torch.Tensor = 1.0, betas: tuple[Any, Any] = (0.9, 0.95), algo: str = "muon",
         scale_eps: bool = False, capturable: bool = False, verbose: bool = False, *,
         use_fallback: bool | None = None, use_muon: bool | None = None,
         ns_dtype: torch.dtype | None = torch.bfloat16) -> GradientTransformation:
    r"""Muon exactly as ``timm.optim.Muon`` (same names, order and defaults): matrices and
    conv weights orthogonalised, every other param (and any with ``use_fallback``) stepped by
    AdamW, or NAdamW with ``nesterov``.

    Per Muon param (:func:`~functional_optim.transforms.newton_schulz_timm.muon_suitable`),
    with :math:`\mu` = ``momentum``, :math:`\eta` = ``lr``, :math:`\lambda` = ``weight_decay``:

    .. math::

        B_t &= \mathrm{lerp}(B_{t-1}, g, 1 - \mu), \quad
            \tilde B = \mathrm{lerp}(g, B_t, \mu) \text{ with nesterov, else } B_t \quad (\texttt{ema}) \\
        O &= \mathrm{NS}(\tilde B) \text{ in bfloat16, convs as matrices}
            \quad (\texttt{orthogonalize\_newton\_schulz\_timm}) \\
        d &= s(\text{shape})\, O \text{ ("muon")}, \text{ or AdaMuon's } s\,O/(\sqrt{\hat v} + \epsilon)
            \text{ ("adamuon")} \quad (\texttt{scale\_by\_muon\_shape}, \texttt{scale\_by\_adamuon}) \\
        p &\leftarrow p\,(1 - \eta\lambda) - \eta\, d

    Fallback params: timm's AdamW (``betas``, ``eps``; NAdamW's numerator with ``nesterov``)
    at the lr :math:`\eta f` (:math:`f` = ``fallback_lr_scale``), decay :math:`\eta f \lambda`.
    Routing per leaf as timm's per param group (:func:`muon_labels`): ``use_fallback``
    and ``use_muon`` are timm's optional group keys (keyword only here). ``capturable`` and
    ``verbose`` are accepted for timm's signature and have no effect on the pure update.
    timm registers it as ``muon``, ``nmuon`` (nesterov), ``adamuon`` (``algo="adamuon"``)
    and ``nadamuon``.

    Args:
      lr: :math:`\eta` >= 0. Default 0.02.
      weight_decay: :math:`\lambda` >= 0. Default 0.
      momentum: :math:`\mu` in [0, 1). Default 0.95.
      nesterov: Nesterov momentum (and NAdamW for the fallback). Default False.
      ns_steps: Newton–Schulz steps, an int >= 0. Default 5.
      ns_coefficients: a preset name, a triple or a sequence of triples. Default "quintic".
      eps: >= 0, the norm floor of the iteration, AdaMuon's and the fallback's epsilon. Default 1e-7.
      safety_factor: multiplies the norm the iteration starts by dividing by. Default 1.0.
      adjust_lr_fn: the shape factor (see :func:`~functional_optim.scale_by_muon_shape`,
        :func:`~functional_optim.scale_by_adamuon`). Default "match_rms_adamw".
      conv_mode: "flatten" or "batched" (one matrix per kernel position). Default "flatten".
      normalize_spatial: batched convs also scaled by ``prod(kernel)**-0.5``. Default True.
      adamw_lr: deprecated (timm's): sets ``fallback_lr_scale = adamw_lr / lr``. Default None.
      fallback_lr_scale: :math:`f`. Default 1.0.
      betas: ``(beta1, beta2)``: the fallback's, and beta2 for AdaMuon. Default (0.9, 0.95).
      algo: "muon" or "adamuon". Default "muon".
      scale_eps: the iteration's eps scaled by :math:`\sqrt{d_{in}/d_{out}}` (μP). Default False.
      capturable: accepted, no effect. Default False.
      verbose: accepted, no effect. Default False.
      use_fallback: every leaf to the fallback (timm's group key). Default None.
      use_muon: every leaf to Muon (True) or the fallback (False) (timm's group key). Default None.
      ns_dtype: the iteration's dtype (not timm's argument): bfloat16 (timm's, bit for bit)
        or None for the param's own. Default bfloat16.

    References:
      Jordan et al., *Muon: An optimizer for hidden layers in neural networks*, 2024,
      https://kellerjordan.github.io/posts/muon/. Si et al., *AdaMuon: Adaptive Muon
      Optimizer*, 2025, arXiv:2507.11005.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.timm.muon(lr=0.1, adjust_lr_fn=None, ns_dtype=None)
      >>> params = {"w": torch.zeros(4, 4, dtype=torch.float64), "b": torch.zeros(4, dtype=torch.float64)}
      >>> g = {"w": torch.eye(4, dtype=torch.float64), "b": torch.ones(4, dtype=torch.float64)}
      >>> u, _ = opt.update(g, opt.init(params), params)
      >>> u["b"]  # AdamW's first step: -lr * sign(g)
      tensor([-0.1000, -0.1000, -0.1000, -0.1000], dtype=torch.float64)
    """
    check_range("learning rate", lr, 0.0)
    check_range("weight_decay", weight_decay, 0.0)
    check_range("momentum", momentum, 0.0, 1.0)
    check_range("epsilon", eps, 0.0)
    if conv_mode not in ("flatten", "batched"):
        raise ValueError(f"Invalid conv_mode: {conv_mode}")
    if algo not in ALGOS:
        raise ValueError(f"Invalid algo: {algo}. Must be 'muon' or 'adamuon'")
    _bools(nesterov=nesterov, normalize_spatial=normalize_spatial, scale_eps=scale_eps, capturable=capturable,
           verbose=verbose)
    b1, b2 = _betas(betas)
    fallback_lr_scale = _fallback_scale(lr, adamw_lr, fallback_lr_scale)
    check_range("fallback_lr_scale", fallback_lr_scale, 0.0)
    decay = not is_zero(weight_decay)
    shape_step = (scale_by_adamuon(b2, eps, adjust_lr_fn, conv_mode, normalize_spatial) if algo == "adamuon"
                  else scale_by_muon_shape(adjust_lr_fn, conv_mode, normalize_spatial))
    matrices = chain(
        ema(momentum, debias=False, nesterov=nesterov),
        orthogonalize_newton_schulz_timm(ns_coefficients, ns_steps, eps, safety_factor, scale_eps, conv_mode,
                                         dtype=ns_dtype),
        shape_step,
        scale_by_learning_rate(lr),
        *([add_decoupled_weight_decay(weight_decay, lr)] if decay else []),
    )
    # the fallback at lr * f: its update and decay at lr, then everything scaled by f (always
    # a stage: the structure must not depend on f's value, which may be a 0-d tensor)
    fallback = chain(
        scale_by_timm_adam(b1, b2, eps, nesterov=nesterov),
        scale_by_learning_rate(lr),
        *([add_decoupled_weight_decay(weight_decay, lr)] if decay else []),
        scale(fallback_lr_scale),
    )
    return partition({"muon": matrices, "fallback": fallback}, muon_labels(use_fallback, use_muon))
