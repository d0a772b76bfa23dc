"""``torch.optim.Adafactor``'s second moment: row and column variances of the gradient for
params with at least two dims (factored over the last two), a full variance for the others,
and the gradient divided by the root of the estimate clamped at ``eps``."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation, Needs, declare
from ..hyperparams import check_number, check_range
from ..tree import select
from .factored import FactorDims, factor_dims_of, factored_zeros


class ScaleByFactoredVarianceState(NamedTuple):
    """State of :func:`scale_by_factored_variance` (torch's per-param keys in brackets)."""

    count: Any  # tree of 0-d int32: updates each leaf has received [step]
    v_row: Any  # tree: factored leaves' mean over dim_row, keepdim (size 1 there) [row_var]; else None
    v_col: Any  # tree: factored leaves' mean over dim_col, keepdim (size 1 there) [col_var]; else None
    v: Any  # tree like params: the variance of unfactored leaves [variance]; else None


def _keep(shape: torch.Size, dim: int) -> list[int]:
    out = list(shape)
    out[dim] = 1
    return out


def _eps1(eps: Any, x: torch.Tensor) -> Any:
    # torch's default: the machine epsilon of the param's dtype (per leaf here, as torch's
    # foreach path takes it per dtype group)
    return torch.finfo(x.dtype).eps if eps is None else eps


def _sq_means(g: torch.Tensor, dim: int) -> torch.Tensor:
    # mean(g**2) over ``dim`` (keepdim), as torch forms it: ||g||_dim ** 2 / size(dim)
    norm = k.unit_norms([g], dim, dtype=g.dtype)[0]
    return k.div(k.mul([norm], [norm], donate=True), g.shape[dim], donate=True)[0]


def scale_by_factored_variance(beta2_decay: float | torch.Tensor = -0.8, eps: float | torch.Tensor | None = None,
                               *, factor_dims: FactorDims = "last_two",
                               min_dim_size_to_factor: int = 0) -> GradientTransformation:
    r"""Divide the update by the root of Adafactor's second-moment estimate, with
    ``torch.optim.Adafactor``'s numerics.

    Per leaf at its step :math:`t` (from 1), with :math:`g` its update and :math:`c` =
    ``beta2_decay`` (so :math:`\hat\beta_{2,t} = 1 - t^{c}`), in the order computed:

    .. math::

        w &= 1 - \hat\beta_{2,t} = t^{c} \\
        \text{factored: } R_t &= \mathrm{lerp}\big(R_{t-1},\ \lVert g \rVert_{d_r}^2 / n_{d_r},\ w\big),
            \quad C_t = \mathrm{lerp}\big(C_{t-1},\ \lVert g \rVert_{d_c}^2 / n_{d_c},\ w\big) \\
        \hat V &= R_t\, C_t \,/\, \max\big(\mathrm{mean}_{d_c}(R_t),\ \epsilon\big) \\
        \text{otherwise: } \hat V &= V_t = \mathrm{lerp}(V_{t-1},\ g \odot g,\ w) \\
        u &= \max(\hat V, \epsilon^2)^{-1/2} \odot g

    where :math:`\lVert g \rVert_d` is the 2-norm over dim :math:`d` (keepdim) and
    :math:`n_d` that dim's size: :math:`R` is the mean of :math:`g^2` over the row dim
    :math:`d_r` (torch's ``row_var``, size 1 at :math:`d_r`), :math:`C` over the column
    dim :math:`d_c` (``col_var``); their product broadcasts to the leaf's shape. Moments
    start at 0. Clamping :math:`\hat V` at :math:`\epsilon^2` keeps :math:`u` at most
    :math:`|g| / \epsilon`.

    Which leaves are factored is an option: ``"last_two"`` with ``min_dim_size_to_factor=0``
    (the defaults) factors every leaf with ``ndim >= 2`` over its last two dims, as torch
    does; ``"timm"`` or a callable as in :func:`~functional_optim.scale_by_factored_rms`
    (which has timm's numerics: ``eps`` added to :math:`g^2`). Complex or sparse updates
    raise ``RuntimeError`` (torch's message).

    Declares ``Needs.MATRIX`` (per-row and per-column reductions of each param).

    Args:
      beta2_decay: :math:`c` <= 0; the second-moment decay is :math:`1 - t^{c}`. Default -0.8.
      eps: :math:`\epsilon` >= 0 (torch's ``eps[0]``), or None (default): the machine
        epsilon of each leaf's dtype, ``torch.finfo(dtype).eps``.
      factor_dims: ``"last_two"`` (default), ``"timm"`` or a callable (see above).
      min_dim_size_to_factor: int >= 0, the size both factored dims must reach. Default 0.

    References:
      Shazeer & Stern, *Adafactor: Adaptive Learning Rates with Sublinear Memory Cost*,
      2018, arXiv:1804.04235.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_factored_variance()
      >>> g = {"w": torch.tensor([[1.0, 2.0], [2.0, 4.0]])}
      >>> u, state = tx.update(g, tx.init(g))
      >>> state.v_row["w"].shape, state.v_col["w"].shape  # torch's row_var and col_var
      (torch.Size([2, 1]), torch.Size([1, 2]))
      >>> u["w"]  # at t = 1 a rank-1 g**2 is recovered exactly: u = sign(g)
      tensor([[1., 1.],
              [1., 1.]])
    """
    check_range("beta2_decay", beta2_decay, None, 0.0, high_inclusive=True)
    check_number("beta2_decay", beta2_decay)
    if eps is not None:
        check_range("eps", eps, 0.0)
    dims_of = factor_dims_of(factor_dims, min_dim_size_to_factor)

    def init_fn(params):
        return ScaleByFactoredVarianceState(steps.leaf_counts(params), *factored_zeros(params, dims_of, _keep))

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        sel = select(updates, count=state.count, v_row=state.v_row, v_col=state.v_col, v=state.v)
        g = sel.updates
        if not g:
            return updates, state
        for x in g:
            if x.is_complex():
                raise RuntimeError("Adafactor does not support complex parameters")
            if x.is_sparse:
                raise RuntimeError("Adafactor does not support sparse gradients")
        counts = steps.increment(sel["count"], donate=donate)
        weights = k.scalars_for(steps.per_leaf(lambda t: t ** beta2_decay, counts, g), g)  # 1 - beta2_t
        rows, cols, fulls, out = list(sel["v_row"]), list(sel["v_col"]), list(sel["v"]), []
        for i, x in enumerate(g):
            eps1 = _eps1(eps, x)
            dims = dims_of(x)
            if dims is None:
                fulls[i] = k.lerp([fulls[i]], k.mul([x], [x]), weights[i], donate=donate)[0]
                estimate = fulls[i]  # read, never written: the clamp below makes a new tensor
            else:
                dim_col, dim_row = dims
                rows[i] = k.lerp([rows[i]], [_sq_means(x, dim_row)], weights[i], donate=donate)[0]
                cols[i] = k.lerp([cols[i]], [_sq_means(x, dim_col)], weights[i], donate=donate)[0]
                norm = k.clamp(k.means([rows[i]], dim_col), min=eps1, donate=True)
                estimate = k.div(k.mul([rows[i]], [cols[i]]), norm, donate=True)[0]
            root = k.power(k.clamp([estimate], min=eps1 * eps1), -0.5, donate=True)  # torch's rsqrt
            out.append(k.mul(root, [x], donate=True)[0])
        new_state = ScaleByFactoredVarianceState(
            count=sel.rebuild(counts, "count"), v_row=sel.rebuild(rows, "v_row"),
            v_col=sel.rebuild(cols, "v_col"), v=sel.rebuild(fulls, "v"))
        return sel.rebuild(out), new_state

    return declare(GradientTransformation(init_fn, update_fn), Needs.MATRIX)
