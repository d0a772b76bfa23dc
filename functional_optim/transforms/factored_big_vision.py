"""Big Vision's Adafactor second moment: factored over each param's two largest dims, with
a capped, offset decay schedule (timm's ``AdafactorBigVision``), and a momentum kept in a
lower precision than the update (rounded there every step, as timm stores it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation, Needs, declare, needs
from ..hyperparams import check_number, check_range
from ..tree import select
from .factored import factored_zeros
from .momentum import ema

__all__ = ["ScaleByFactoredRmsBigVisionState", "big_vision_factor_dims", "scale_by_factored_rms_big_vision",
           "ema_in_dtype"]


class ScaleByFactoredRmsBigVisionState(NamedTuple):
    """State of :func:`scale_by_factored_rms_big_vision` (timm's per-param keys in brackets)."""

    count: Any  # tree of 0-d int32: updates each leaf has received [step]
    v_row: Any  # tree: factored leaves' mean over dim_row, keepdim (size 1 there) [exp_avg_sq_r]; else None
    v_col: Any  # tree: factored leaves' mean over dim_col, keepdim (size 1 there) [exp_avg_sq_c]; else None
    v: Any  # tree like params: the average of unfactored leaves [exp_avg_sq]; else None


def big_vision_factor_dims(shape: Sequence[int], min_dim_size_to_factor: int) -> tuple[int, int] | None:
    """Big Vision's (and timm's ``AdafactorBigVision``'s) factored dims ``(dim_col, dim_row)``:
    the second largest and the largest dim (ties: the later dim counts as larger), or None
    when ``ndim < 2`` or the second largest is smaller than ``min_dim_size_to_factor``.
    ``dim_col`` may come after ``dim_row``.

    Example:
      >>> from functional_optim.transforms.factored_big_vision import big_vision_factor_dims
      >>> big_vision_factor_dims((64, 32), 16), big_vision_factor_dims((16, 16, 3, 3), 16)
      ((1, 0), (0, 1))
      >>> big_vision_factor_dims((8, 64), 16), big_vision_factor_dims((64,), 16)
      (None, None)
    """
    if len(shape) < 2:
        return None
    ranked = sorted((size, i) for i, size in enumerate(shape))
    if ranked[-2][0] < min_dim_size_to_factor:
        return None
    return ranked[-2][1], ranked[-1][1]


def _keep(shape: Sequence[int], dim: int) -> list[int]:
    out = list(shape)
    out[dim] = 1
    return out


def _one_minus_beta2(t: torch.Tensor, decay_rate: Any, decay_offset: int, beta2_cap: Any) -> torch.Tensor:
    # 1 - min(cap, 1 - max(t - offset, 1) ** -decay_rate), as timm forms it
    decay_step = torch.clamp(t - decay_offset, min=1.0) if decay_offset else t
    beta2 = torch.clamp(1.0 - decay_step ** (-decay_rate), max=beta2_cap)
    return 1.0 - beta2


def scale_by_factored_rms_big_vision(decay_rate: float | torch.Tensor = 0.8, decay_offset: int = 0,
                                     beta2_cap: float | torch.Tensor = 0.999,
                                     eps: float | torch.Tensor | None = None,
                                     min_dim_size_to_factor: int = 16) -> GradientTransformation:
    r"""Divide the update by the root of Big Vision's factored second moment, with timm's
    ``AdafactorBigVision`` numerics.

    Per leaf at its step :math:`t` (from 1), with :math:`g` its update, in the order computed:

    .. math::

        \hat\beta_{2,t} &= \min\big(\beta_{cap},\ 1 - \max(t - t_0, 1)^{-c}\big), \qquad
            w = 1 - \hat\beta_{2,t}, \qquad U = g^2 + \epsilon \\
        \text{factored: } R_t &= \mathrm{lerp}(R_{t-1}, \mathrm{mean}_{d_r}(U), w), \quad
            C_t = \mathrm{lerp}(C_{t-1}, \mathrm{mean}_{d_c}(U), w) \\
        u &= g \cdot \big(R_t / \mathrm{mean}_{d_c}(R_t)\big)^{-1/2} \cdot C_t^{-1/2} \\
        \text{otherwise: } V_t &= \mathrm{lerp}(V_{t-1}, U, w), \quad u = g\, V_t^{-1/2}

    with :math:`(d_c, d_r)` from :func:`big_vision_factor_dims` (the two largest dims);
    :math:`R` (timm's ``exp_avg_sq_r``) and :math:`C` (``exp_avg_sq_c``) keep the leaf's
    ndim with size 1 at :math:`d_r` and :math:`d_c`, so they broadcast against :math:`g`.
    Moments start at 0. Declares ``Needs.MATRIX`` (per-row and per-column means).

    Args:
      decay_rate: :math:`c` >= 0 of the decay schedule. Default 0.8.
      decay_offset: :math:`t_0`, an int >= 0 delaying the schedule. Default 0.
      beta2_cap: :math:`\beta_{cap}` in [0, 1], the largest decay. Default 0.999.
      eps: :math:`\epsilon` >= 0 added to :math:`g^2`, or None (default): 1e-7 for float16
        updates, else 1e-30 (timm's per-param default).
      min_dim_size_to_factor: int >= 0, the size the second largest dim must reach. Default 16.

    References:
      Zhai et al., *Scaling Vision Transformers*, 2021, arXiv:2106.04560. Shazeer & Stern,
      *Adafactor: Adaptive Learning Rates with Sublinear Memory Cost*, 2018, arXiv:1804.04235.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_factored_rms_big_vision(min_dim_size_to_factor=2, eps=0.0)
      >>> g = {"w": torch.full((2, 3), 2.0)}
      >>> u, state = tx.update(g, tx.init(g))
      >>> u["w"][0], state.v_row["w"].shape, state.v_col["w"].shape  # at t = 1: g / |g|
      (tensor([1., 1., 1.]), torch.Size([2, 1]), torch.Size([1, 3]))
    """
    check_range("decay_rate", decay_rate, 0.0)
    check_number("decay_rate", decay_rate)
    check_range("beta2_cap", beta2_cap, 0.0, 1.0, high_inclusive=True)
    if eps is not None:
        check_range("eps", eps, 0.0)
    for name, value in (("decay_offset", decay_offset), ("min_dim_size_to_factor", min_dim_size_to_factor)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")

    def dims_of(p: torch.Tensor) -> tuple[int, int] | None:
        return big_vision_factor_dims(tuple(p.shape), min_dim_size_to_factor)

    def init_fn(params):
        return ScaleByFactoredRmsBigVisionState(steps.leaf_counts(params), *factored_zeros(params, dims_of, _keep))

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        sel = select(updates, count=state.count, v_row=state.v_row, v_col=state.v_col, v=state.v)
        g = sel.updates
        if not g:
            return updates, state
        counts = steps.increment(sel["count"], donate=donate)
        weights = k.scalars_for(steps.per_leaf(
            lambda t: _one_minus_beta2(t, decay_rate, decay_offset, beta2_cap), counts, g), g)
        rows, cols, fulls, out = list(sel["v_row"]), list(sel["v_col"]), list(sel["v"]), []
        for i, x in enumerate(g):
            eps_i = eps if eps is not None else (1e-7 if x.dtype == torch.float16 else 1e-30)
            sq = k.add(k.mul([x], [x]), eps_i, donate=True)
            dims = dims_of(x)
            if dims is None:
                fulls[i] = k.lerp([fulls[i]], sq, weights[i], donate=donate)[0]
                out.append(k.mul([x], k.power([fulls[i]], -0.5))[0])
                continue
            dim_col, dim_row = dims
            rows[i] = k.lerp([rows[i]], k.means(sq, dim_row), weights[i], donate=donate)[0]
            cols[i] = k.lerp([cols[i]], k.means(sq, dim_col), weights[i], donate=donate)[0]
            row_factor = k.power(k.div([rows[i]], k.means([rows[i]], dim_col)), -0.5, donate=True)
            out.append(k.mul(k.mul([x], row_factor, donate=False), k.power([cols[i]], -0.5), donate=True)[0])
        new_state = ScaleByFactoredRmsBigVisionState(
            count=sel.rebuild(counts, "count"), v_row=sel.rebuild(rows, "v_row"),
            v_col=sel.rebuild(cols, "v_col"), v=sel.rebuild(fulls, "v"))
        return sel.rebuild(out), new_state

    return declare(GradientTransformation(init_fn, update_fn), Needs.MATRIX)


def ema_in_dtype(decay: float | torch.Tensor, dtype: torch.dtype | None = torch.bfloat16) -> GradientTransformation:
    r"""An exponential moving average stored in ``dtype`` (e.g. bfloat16, rounded there at
    every step), handed on in the update's own dtype: timm's ``AdafactorBigVision``
    momentum (``momentum_dtype``).

    Per leaf, in the order computed (:func:`~functional_optim.ema` with
    ``accumulator_dtype=dtype``, not debiased):

    .. math::

        m_t = \mathrm{lerp}\big(m_{t-1},\ \mathrm{round}_{dtype}(g),\ 1 - \mu\big)
            \text{ (in dtype)}, \qquad u = m_t \text{ cast to } g\text{'s dtype}

    Args:
      decay: :math:`\mu` in [0, 1], a number or 0-d tensor.
      dtype: the floating dtype the average is kept in, or None for the update's. Default bfloat16.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.ema_in_dtype(0.9)
      >>> u, state = tx.update(torch.full((1,), 1.0 / 3.0, dtype=torch.float64), tx.init(torch.zeros(1)))
      >>> u, state.ema.dtype  # (1/3 rounded to bfloat16) * 0.1, rounded again
      (tensor([0.0334], dtype=torch.float64), torch.bfloat16)
    """
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
    inner = ema(decay, debias=False, accumulator_dtype=dtype)

    def update_fn(updates, state, params=None, **extra):
        sel = select(updates)
        dtypes = [x.dtype for x in sel.updates]
        out, new_state = inner.update(updates, state, params, **extra)
        osel = select(out)
        return osel.rebuild(k.cast(osel.updates, dtypes)), new_state

    return declare(GradientTransformation(inner.init, update_fn), needs(inner))
