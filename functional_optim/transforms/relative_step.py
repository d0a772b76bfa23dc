"""Adafactor's relative step size: a per-param learning rate from the step count and the
param's RMS (timm's ``Adafactor._get_lr``), and the weight decay scaled by it."""

from __future__ import annotations

from typing import Any, NamedTuple

import optree
import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation, Needs, declare
from ..hyperparams import check_range
from ..tree import select


class ScaleByRelativeStepSizeState(NamedTuple):
    """State of :func:`scale_by_relative_step_size` (timm's per-param keys in brackets)."""

    count: Any  # tree of 0-d int32: updates each leaf has received [step]
    rms: Any  # tree of 0-d floats: the RMS of the param at its last update [RMS]


class AddRelativeStepDecayedWeightsState(NamedTuple):
    """State of :func:`add_relative_step_decayed_weights`."""

    count: Any  # tree of 0-d int32: updates each leaf has received


def _check(lr: Any, eps_scale: Any, scale_parameter: Any, warmup_init: Any) -> None:
    if lr is not None:
        check_range("lr", lr, 0.0)
    check_range("eps_scale", eps_scale, 0.0)
    for name, flag in (("scale_parameter", scale_parameter), ("warmup_init", warmup_init)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    if warmup_init and lr is not None:
        raise ValueError("warmup_init requires relative_step=True (warmup_init needs lr=None)")


def _rms_dtype(p: torch.Tensor) -> torch.dtype:
    return k.norm_dtype([p])


def _param_rms(ps: list[torch.Tensor]) -> list[torch.Tensor]:
    # timm's ``p.norm(2) / p.numel() ** 0.5`` (a param of bfloat16/float16 in float32)
    norms = k.norms(ps, k.norm_dtype(ps)) if ps else []
    return [n.to(_rms_dtype(p)) / (p.numel() ** 0.5) for n, p in zip(norms, ps)]


def _step_sizes(counts: list[torch.Tensor], ps: list[torch.Tensor], rms: list[torch.Tensor], lr: Any,
                eps_scale: Any, scale_parameter: bool, warmup_init: bool,
                max_relative_step: Any = 1e-2) -> list[torch.Tensor]:
    # one float64 0-d step size per leaf (timm's lr_t)
    if lr is not None:
        return steps.per_leaf(lambda t: torch.zeros_like(t) + lr, counts, ps)

    def sizes(t, *r):
        min_step = 1e-6 * t if warmup_init else torch.zeros_like(t) + max_relative_step
        lr_t = torch.minimum(min_step, 1.0 / torch.sqrt(t))
        if scale_parameter:
            lr_t = lr_t * torch.maximum(torch.zeros_like(t) + eps_scale, r[0])
        return lr_t

    return steps.per_leaf_with(sizes, counts, ps, *([rms] if scale_parameter else []))


def scale_by_relative_step_size(lr: float | torch.Tensor | None = None, eps_scale: float | torch.Tensor = 1e-3,
                                scale_parameter: bool = True, warmup_init: bool = False, *,
                                max_relative_step: float | torch.Tensor = 1e-2) -> GradientTransformation:
    r"""Multiply each param's update by Adafactor's step size (``timm.optim.Adafactor``'s rule).

    Per leaf at its step :math:`t` (from 1), with :math:`\mathrm{RMS}(p) = \lVert p \rVert_2 /
    \sqrt{n}` of the param before the step (kept in state: timm's ``RMS``):

    .. math::

        \rho_t &= \min(10^{-6} t \text{ if warmup\_init else } \rho_{\max},\ 1/\sqrt{t}) \\
        \eta_t &= \rho_t \cdot \max(\epsilon_{scale}, \mathrm{RMS}(p)) \text{ with scale\_parameter,
            else } \rho_t \qquad (\text{relative step: } lr = \text{None}) \\
        \eta_t &= lr \qquad (\text{external learning rate}) \\
        u &\leftarrow \eta_t\, u

    timm fixes :math:`\rho_{\max} = 10^{-2}`; ``torch.optim.Adafactor`` uses its ``lr``
    there (:func:`~functional_optim.adafactor` passes ``max_relative_step=lr``, ``eps_scale=eps[1]``).
    The output is not negated (chain ``scale(-1)`` to descend). As in timm,
    ``scale_parameter`` and ``warmup_init`` apply to the relative step only. Declares
    ``Needs.LEAVES``: one scalar of state per param (the RMS).

    Args:
      lr: an external learning rate >= 0, or None (default) for the relative step.
      eps_scale: :math:`\epsilon_{scale}` >= 0, the smallest param scale. Default 1e-3.
      scale_parameter: scale the relative step by the param's RMS. Default True.
      warmup_init: warm the relative step up linearly (``1e-6 * t``); needs ``lr=None``.
        Default False.
      max_relative_step: :math:`\rho_{\max}` >= 0, the cap of the relative step without
        warmup (a number or 0-d tensor). Default 1e-2 (timm's constant).

    References:
      Shazeer & Stern, *Adafactor: Adaptive Learning Rates with Sublinear Memory Cost*,
      2018, arXiv:1804.04235.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_relative_step_size()
      >>> params = {"w": torch.full((4,), 2.0)}
      >>> u, state = tx.update({"w": torch.ones(4)}, tx.init(params), params)
      >>> u["w"], state.rms["w"]  # 1e-2 * max(1e-3, RMS(p) = 2)
      (tensor([0.0200, 0.0200, 0.0200, 0.0200]), tensor(2.))
    """
    _check(lr, eps_scale, scale_parameter, warmup_init)
    check_range("max_relative_step", max_relative_step, 0.0)

    def init_fn(params):
        rms = optree.tree_map(lambda p: None if p is None else torch.zeros((), dtype=_rms_dtype(p), device=p.device),
                              params, none_is_leaf=True)
        return ScaleByRelativeStepSizeState(count=steps.leaf_counts(params), rms=rms)

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del extra
        if params is None:
            raise ValueError("scale_by_relative_step_size needs params (update(updates, state, params))")
        sel = select(updates, count=state.count, rms=state.rms, params=params)
        u = sel.updates
        if not u:
            return updates, state
        ps = sel["params"]
        counts = steps.increment(sel["count"], donate=donate)
        rms = k.cast(_param_rms(ps), [r.dtype for r in sel["rms"]])
        lr_t = k.scalars_for(_step_sizes(counts, ps, rms, lr, eps_scale, scale_parameter, warmup_init,
                                         max_relative_step), u)
        out = k.mul(u, lr_t, donate=donate)
        return sel.rebuild(out), ScaleByRelativeStepSizeState(count=sel.rebuild(counts, "count"),
                                                              rms=sel.rebuild(rms, "rms"))

    return declare(GradientTransformation(init_fn, update_fn), Needs.LEAVES)


def add_relative_step_decayed_weights(weight_decay: float | torch.Tensor = 0.0, lr: float | torch.Tensor | None = None,
                                      eps_scale: float | torch.Tensor = 1e-3, scale_parameter: bool = True,
                                      warmup_init: bool = False) -> GradientTransformation:
    r"""Add :math:`\lambda\, \eta_t\, p` to each param's update, with :math:`\eta_t` the step size
    of :func:`scale_by_relative_step_size` (same arguments) at this step: timm Adafactor's
    weight decay, applied after its momentum.

    .. math::

        u \leftarrow u + \lambda\, \eta_t\, p

    Declares ``Needs.LEAVES`` (reads each param's RMS and size).

    Args:
      weight_decay: :math:`\lambda` >= 0. Default 0.
      lr, eps_scale, scale_parameter, warmup_init: as :func:`scale_by_relative_step_size`.

    References:
      Shazeer & Stern, *Adafactor: Adaptive Learning Rates with Sublinear Memory Cost*,
      2018, arXiv:1804.04235.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.add_relative_step_decayed_weights(0.5, lr=0.1)
      >>> params = {"w": torch.full((2,), 2.0)}
      >>> tx.update({"w": torch.zeros(2)}, tx.init(params), params)[0]["w"]  # 0.5 * 0.1 * 2
      tensor([0.1000, 0.1000])
    """
    check_range("weight_decay", weight_decay, 0.0)
    _check(lr, eps_scale, scale_parameter, warmup_init)

    def init_fn(params):
        return AddRelativeStepDecayedWeightsState(count=steps.leaf_counts(params))

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del extra
        if params is None:
            raise ValueError("add_relative_step_decayed_weights needs params (update(updates, state, params))")
        sel = select(updates, count=state.count, params=params)
        u = sel.updates
        if not u:
            return updates, state
        ps = sel["params"]
        counts = steps.increment(sel["count"], donate=donate)
        rms = _param_rms(ps) if (lr is None and scale_parameter) else ps
        lr_t = _step_sizes(counts, ps, rms, lr, eps_scale, scale_parameter, warmup_init)
        coef = k.scalars_for(k.leafwise(lambda s: weight_decay * s, lr_t), u)
        out = k.add(u, ps, coef, donate=donate)
        return sel.rebuild(out), AddRelativeStepDecayedWeightsState(count=sel.rebuild(counts, "count"))

    return declare(GradientTransformation(init_fn, update_fn), Needs.LEAVES)
