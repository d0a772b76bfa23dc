"""An exponential moving average of the params (EMA / Polyak weights) for evaluation."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation, mark_elementwise
from ..hyperparams import check_range, concrete
from ..tree import PyTree, select, zeros_like
from ..tree import map as tree_map
from .lookahead import find_state

__all__ = ["ParamEmaState", "param_ema", "ema_params"]


class ParamEmaState(NamedTuple):
    """State of :func:`param_ema`."""

    count: Any  # tree of 0-d int32: updates each leaf has received
    ema: Any  # tree like params (ema_dtype or the param dtype): the averaged params


def param_ema(decay: float | torch.Tensor = 0.999, *, debias: bool = False, use_warmup: bool = False,
              warmup_gamma: float = 1.0, warmup_power: float = 2 / 3, min_decay: float = 0.0,
              update_after_step: int = 0, ema_dtype: torch.dtype | None = None) -> GradientTransformation:
    """Keep an exponential moving average of the params in state; the updates pass through.

    Place it **last** in a chain: after this step the params will be ``p + u``, so the
    average tracks them: ``ema <- lerp(ema, p + u, 1 - d_t)``, i.e.
    ``ema <- d_t * ema + (1 - d_t) * (p + u)``. ``t`` is the leaf's update count (this
    update included) and ``s = t - update_after_step - 1``; the decay ``d_t`` is

    - ``0`` while ``s <= 0``: the average is a copy of the params, as
      ``torch.optim.swa_utils.AveragedModel`` copies at its first ``update_parameters``
      and timm's ``ModelEmaV3.update(model, step)`` does for ``step <= update_after_step + 1``;
    - ``decay`` by default (``AveragedModel(multi_avg_fn=get_ema_multi_avg_fn(decay))``,
      ``ModelEmaV3`` without warmup);
    - with ``use_warmup``, timm's ``min(max(1 - (1 + s / warmup_gamma)**-warmup_power,
      min_decay), decay)`` (``ModelEmaV3`` with ``use_warmup=True``);
    - with ``debias``, ``(decay - decay**n) / (1 - decay**n)`` with ``n = s + 1``: the
      result equals optax-style debiasing, an EMA started at zero over the ``n`` averaged
      params divided by ``1 - decay**n``.

    ``update_after_step=-1`` never copies: the average starts from (a detached copy of)
    the params given to ``init`` (timm's ``ModelEmaV2``, or ``ModelEmaV3.update`` without
    ``step``). Otherwise ``init`` stores zeros, which the first update overwrites.
    The decay is computed once per step and leaf as a 0-d float64 tensor (no host sync).
    A leaf whose update is None keeps its average (its params do not move); unlike
    ``AveragedModel``, which averages every param at every call.

    Read the averaged params with :func:`ema_params` or ``fo.tree.get(state, "ema")``.

    Args:
      decay: the (maximum) decay, a number or 0-d tensor in [0, 1] ([0, 1) with
        ``debias``). Default 0.999 (``get_ema_multi_avg_fn``'s default).
      debias: optax-style bias correction (see above). Default False.
      use_warmup: timm's decay warmup (see above). Default False.
      warmup_gamma: timm's ``warmup_gamma`` (> 0). Default 1.0.
      warmup_power: timm's ``warmup_power`` (> 0). Default 2/3.
      min_decay: lower bound of the warmed-up decay, in [0, 1]. Default 0.
      update_after_step: leaf updates that copy the params before averaging starts
        (timm's ``update_after_step``), an int >= -1. Default 0.
      ema_dtype: dtype of the average (default: the param's dtype; e.g. float32 for bf16 params).

    Example:
      >>> import torch, functional_optim as fo
      >>> from functional_optim.wrappers.param_ema import param_ema, ema_params
      >>> tx = fo.chain(fo.sgd(lr=1.0), param_ema(decay=0.5))
      >>> params = torch.zeros(1)
      >>> state = tx.init(params)
      >>> for _ in range(3):  # params 1, 2, 3; ema 1, 1.5, 2.25
      ...     u, state = tx.update(-torch.ones(1), state, params)
      ...     params = fo.apply_updates(params, u)
      >>> ema_params(state)
      tensor([2.2500])
    """
    if not isinstance(debias, bool):
        raise TypeError(f"debias must be a bool, got {type(debias).__name__}")
    if not isinstance(use_warmup, bool):
        raise TypeError(f"use_warmup must be a bool, got {type(use_warmup).__name__}")
    if debias and use_warmup:
        raise ValueError("debias and use_warmup cannot both be True (choose one decay rule)")
    check_range("decay", decay, 0.0, 1.0, high_inclusive=not debias)
    check_range("warmup_gamma", warmup_gamma, 0.0)
    check_range("warmup_power", warmup_power, 0.0)
    if concrete(warmup_gamma) == 0.0:
        raise ValueError("Invalid warmup_gamma: 0.0 (expected warmup_gamma > 0)")
    check_range("min_decay", min_decay, 0.0, 1.0, high_inclusive=True)
    if isinstance(update_after_step, bool) or not isinstance(update_after_step, int):
        raise TypeError(f"update_after_step must be an int, got {type(update_after_step).__name__}")
    if update_after_step < -1:
        raise ValueError(f"Invalid update_after_step: {update_after_step} (expected update_after_step >= -1)")
    if ema_dtype is not None and not isinstance(ema_dtype, torch.dtype):
        raise TypeError(f"ema_dtype must be a torch.dtype or None, got {type(ema_dtype).__name__}")

    def weights(t: torch.Tensor) -> torch.Tensor:
        # 1 - d_t for a vector of float step counts t
        s = t - (update_after_step + 1)
        if use_warmup:
            d = 1 - (1 + s / warmup_gamma) ** -warmup_power
            d = torch.clamp(torch.minimum(d, torch.as_tensor(decay, dtype=d.dtype, device=d.device)),
                            min=min_decay)
        elif debias:
            dn = decay ** (s + 1)
            d = (decay - dn) / (1 - dn)
        else:
            d = torch.as_tensor(decay, dtype=t.dtype, device=t.device).expand_as(t)
        return torch.where(s <= 0, 1.0, 1 - d)

    def init_fn(params):
        if update_after_step == -1:  # the average starts from (a detached copy of) the params
            ema = tree_map(lambda p: p.detach().to(ema_dtype or p.dtype, copy=True), params)
        else:  # set to p + u by the first update (weight 1), so init does not copy params
            ema = zeros_like(params, ema_dtype)
        return ParamEmaState(count=steps.leaf_counts(params), ema=ema)

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del extra
        if params is None:
            raise ValueError("param_ema needs params in update(updates, state, params): "
                             "it averages p + u")
        sel = select(updates, params=params, count=state.count, ema=state.ema)
        counts = steps.increment(sel["count"], donate=donate)
        avg = sel["ema"]
        w = steps.per_leaf(weights, counts, avg)
        w = [x.to(a.real.dtype) if x.dtype != a.real.dtype else x for x, a in zip(w, avg)]
        new = [(p + u).to(a.dtype) for p, u, a in zip(sel["params"], sel.updates, avg)]
        avg = k.lerp(avg, new, w, donate=donate)
        return updates, ParamEmaState(count=sel.rebuild(counts, "count"), ema=sel.rebuild(avg, "ema"))

    return mark_elementwise(GradientTransformation(init_fn, update_fn))


def ema_params(state: Any) -> PyTree:
    """The averaged params held by the (single) :class:`ParamEmaState` inside ``state``.

    Args:
      state: a :func:`param_ema` state or any state tree containing exactly one.

    Example:
      >>> import torch, functional_optim as fo
      >>> from functional_optim.wrappers.param_ema import param_ema, ema_params
      >>> tx = fo.chain(fo.adam(lr=0.1), param_ema(update_after_step=-1))
      >>> ema_params(tx.init({"w": torch.ones(2)}))
      {'w': tensor([1., 1.])}
    """
    return find_state(state, ParamEmaState, "param_ema").ema
