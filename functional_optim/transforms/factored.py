"""Adafactor's factored second moment: row and column averages of the squared gradient
for matrices (and conv kernels), a full average for the other params."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Union

import optree
import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation, Needs, declare
from ..hyperparams import check_number, check_range
from ..tree import select

FactorDims = Union[str, Callable[[Sequence[int], int], Union[tuple[int, int], None]]]


class ScaleByFactoredRmsState(NamedTuple):
    """State of :func:`scale_by_factored_rms` (timm's per-param keys in brackets)."""

    count: Any  # tree of 0-d int32: updates each leaf has received [step]
    v_row: Any  # tree: factored leaves' average over dim_row (shape without dim_row) [exp_avg_sq_row]; else None
    v_col: Any  # tree: factored leaves' average over dim_col (shape without dim_col) [exp_avg_sq_col]; else None
    v: Any  # tree like params: the full average of unfactored leaves [exp_avg_sq]; else None


def timm_factor_dims(shape: Sequence[int], min_dim_size_to_factor: int) -> tuple[int, int] | None:
    """timm's choice of the two dims to factor, ``(dim_col, dim_row)``, or None (unfactored).

    With ``m = min_dim_size_to_factor`` (strict inequalities): ``(0, 1)`` when
    ``ndim > 2`` and ``shape[0] > m`` and ``shape[1] > m`` (conv weights: out and in
    channels); else ``(ndim - 2, ndim - 1)`` when ``ndim >= 2`` and both trailing dims are
    ``> m``; else None.

    Example:
      >>> from functional_optim.transforms.factored import timm_factor_dims
      >>> timm_factor_dims((32, 24, 3, 3), 16), timm_factor_dims((20, 40), 16), timm_factor_dims((8, 40), 16)
      ((0, 1), (0, 1), None)
    """
    ndim = len(shape)
    m = min_dim_size_to_factor
    if ndim > 2 and shape[0] > m and shape[1] > m:
        return 0, 1
    if ndim >= 2 and shape[-2] > m and shape[-1] > m:
        return ndim - 2, ndim - 1
    return None


def last_two_factor_dims(shape: Sequence[int], min_dim_size_to_factor: int) -> tuple[int, int] | None:
    """The last two dims ``(ndim - 2, ndim - 1)`` of every param with at least 2 dims, if
    both are ``>= min_dim_size_to_factor`` (``torch.optim.Adafactor`` factors every
    ``ndim >= 2`` param this way: use ``min_dim_size_to_factor=0``).

    Example:
      >>> from functional_optim.transforms.factored import last_two_factor_dims
      >>> last_two_factor_dims((32, 24, 3, 3), 0), last_two_factor_dims((5,), 0)
      ((2, 3), None)
    """
    ndim = len(shape)
    if ndim >= 2 and shape[-2] >= min_dim_size_to_factor and shape[-1] >= min_dim_size_to_factor:
        return ndim - 2, ndim - 1
    return None


_FACTOR_RULES = {"timm": timm_factor_dims, "last_two": last_two_factor_dims}


def factor_dims_of(factor_dims: FactorDims, min_dim_size_to_factor: int
                   ) -> Callable[[torch.Tensor], tuple[int, int] | None]:
    """The validated rule ``param -> (dim_col, dim_row) | None`` of a ``factor_dims``
    option (``"timm"``, ``"last_two"`` or a callable ``(shape, min_dim_size_to_factor)``),
    shared by the factored second moments (:func:`scale_by_factored_rms`,
    :func:`~functional_optim.scale_by_factored_variance`).

    Example:
      >>> import torch
      >>> from functional_optim.transforms.factored import factor_dims_of
      >>> factor_dims_of("last_two", 0)(torch.zeros(2, 3, 4)), factor_dims_of("last_two", 0)(torch.zeros(3))
      ((1, 2), None)
    """
    if isinstance(min_dim_size_to_factor, bool) or not isinstance(min_dim_size_to_factor, int) \
            or min_dim_size_to_factor < 0:
        raise ValueError(f"min_dim_size_to_factor must be an int >= 0, got {min_dim_size_to_factor!r}")
    if isinstance(factor_dims, str):
        if factor_dims not in _FACTOR_RULES:
            raise ValueError(f"factor_dims must be 'timm', 'last_two' or a callable, got {factor_dims!r}")
        rule = _FACTOR_RULES[factor_dims]
    elif callable(factor_dims):
        rule = factor_dims
    else:
        raise TypeError(f"factor_dims must be 'timm', 'last_two' or a callable, got {type(factor_dims).__name__}")

    def dims_of(p: torch.Tensor) -> tuple[int, int] | None:
        dims = rule(tuple(p.shape), min_dim_size_to_factor)
        if dims is not None:
            dim_col, dim_row = dims
            if not 0 <= dim_col < dim_row < p.dim():
                raise ValueError(f"factor_dims returned {dims} for a param of shape {tuple(p.shape)}: "
                                 "need 0 <= dim_col < dim_row < ndim")
        return dims

    return dims_of


def factored_zeros(params: Any, dims_of: Callable[[torch.Tensor], Any],
                   reduced: Callable[[Sequence[int], int], Sequence[int]]) -> tuple[Any, Any, Any]:
    """Zero row, column and full second moments for ``params``: a factored leaf (``dims_of``
    gives its (row, col) dims) gets a row and a column statistic shaped by
    ``reduced(shape, dim)`` (the shape with ``dim`` reduced), any other a full one; None
    where a leaf has none."""
    def row(p):
        d = None if p is None else dims_of(p)
        return None if d is None else p.new_zeros(reduced(p.shape, d[1]))

    def col(p):
        d = None if p is None else dims_of(p)
        return None if d is None else p.new_zeros(reduced(p.shape, d[0]))

    def full(p):
        return None if p is None or dims_of(p) is not None else torch.zeros_like(p)

    return tuple(optree.tree_map(f, params, none_is_leaf=True) for f in (row, col, full))


def _remove(shape: Sequence[int], dim: int) -> tuple[int, ...]:
    return tuple(shape[:dim]) + tuple(shape[dim + 1:])


def scale_by_factored_rms(decay_rate: float | torch.Tensor = -0.8, eps: float | torch.Tensor = 1e-30,
                          min_dim_size_to_factor: int = 16, factor_dims: FactorDims = "timm"
                          ) -> GradientTransformation:
    r"""Divide the update by the root of Adafactor's (factored) second moment, with
    ``timm.optim.Adafactor``'s numerics.

    Per leaf at its step :math:`t` (from 1), with :math:`g` its update:

    .. math::

        \hat\beta_{2,t} &= 1 - t^{c} \quad (c = \texttt{decay\_rate}),
            \qquad U = g^2 + \epsilon \\
        \text{factored: } R_t &= \mathrm{lerp}(R_{t-1}, \mathrm{mean}_{d_r}(U), 1 - \hat\beta_{2,t}),
            \quad C_t = \mathrm{lerp}(C_{t-1}, \mathrm{mean}_{d_c}(U), 1 - \hat\beta_{2,t}) \\
        u &= \big(R_t / \mathrm{mean}_{d_c}(R_t)\big)^{-1/2}_{[d_r]} \cdot (C_t)^{-1/2}_{[d_c]} \cdot g \\
        \text{otherwise: } V_t &= \mathrm{lerp}(V_{t-1}, U, 1 - \hat\beta_{2,t}), \quad u = V_t^{-1/2}\, g

    where :math:`(d_c, d_r)` are the two factored dims (``dim_col < dim_row``), :math:`R`
    has the leaf's shape without :math:`d_r` and :math:`C` without :math:`d_c` (timm's
    ``exp_avg_sq_row`` / ``exp_avg_sq_col``), and :math:`X_{[d]}` re-inserts dim :math:`d`
    for broadcasting. All moments start at 0.

    Which dims are factored is an option (``factor_dims``), not hard-coded: ``"timm"``
    (:func:`timm_factor_dims`: conv weights factor their two channel dims),
    ``"last_two"`` (:func:`last_two_factor_dims`, torch.optim's choice), or a callable
    ``(shape, min_dim_size_to_factor) -> (dim_col, dim_row) | None``.

    Declares ``Needs.MATRIX`` (per-row and per-column means of each param).

    Args:
      decay_rate: :math:`c` < 0 (or 0 for no averaging after the first step): the
        second-moment decay is :math:`1 - t^c`. Default -0.8.
      eps: :math:`\epsilon` >= 0 added to the squared update. Default 1e-30.
      min_dim_size_to_factor: the size both factored dims must exceed (timm) or reach
        (``"last_two"``). Default 16.
      factor_dims: ``"timm"``, ``"last_two"`` or a callable (see above). Default "timm".

    References:
      Shazeer & Stern, *Adafactor: Adaptive Learning Rates with Sublinear Memory Cost*,
      2018, arXiv:1804.04235.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_factored_rms(min_dim_size_to_factor=1, eps=0.0)
      >>> g = {"w": torch.full((2, 3), 2.0)}
      >>> u, state = tx.update(g, tx.init(g))
      >>> u["w"], state.v_row["w"], state.v_col["w"]  # at t = 1 the moments are the means of g**2
      (tensor([[1., 1., 1.],
              [1., 1., 1.]]), tensor([4., 4.]), tensor([4., 4., 4.]))
    """
    check_range("decay_rate", decay_rate, None, 0.0, high_inclusive=True)
    check_range("eps", eps, 0.0)
    dims_of = factor_dims_of(factor_dims, min_dim_size_to_factor)
    check_number("decay_rate", decay_rate)

    def init_fn(params):
        return ScaleByFactoredRmsState(steps.leaf_counts(params), *factored_zeros(params, dims_of, _remove))

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        sel = select(updates, count=state.count, v_row=state.v_row, v_col=state.v_col, v=state.v)
        g = sel.updates
        if not g:
            return updates, state
        counts = steps.increment(sel["count"], donate=donate)
        weights = steps.per_leaf(lambda t: 1.0 - (1.0 - t ** decay_rate), counts, g)  # 1 - beta2t
        sq = k.add(k.mul(g, g), eps, donate=True)  # g ** 2 + eps
        rows, cols, fulls, out = list(sel["v_row"]), list(sel["v_col"]), list(sel["v"]), []
        for i, x in enumerate(g):
            dims = dims_of(x)
            w = k.scalars_for([weights[i]], [x])[0]
            if dims is None:
                v = k.lerp([fulls[i]], [sq[i]], w, donate=donate)[0]
                fulls[i] = v
                out.append(k.mul(k.power([v], -0.5), [x], donate=True)[0])
                continue
            dim_col, dim_row = dims
            mean_row = k.means([sq[i]], dim_row)[0].squeeze(dim_row)
            mean_col = k.means([sq[i]], dim_col)[0].squeeze(dim_col)
            r = k.lerp([rows[i]], [mean_row], w, donate=donate)[0]
            c = k.lerp([cols[i]], [mean_col], w, donate=donate)[0]
            rows[i], cols[i] = r, c
            r_factor = k.power(k.div([r], k.means([r], dim_col)), -0.5, donate=True)[0].unsqueeze(dim_row)
            c_factor = k.power([c], -0.5)[0].unsqueeze(dim_col)
            out.append(k.mul(k.mul([r_factor], [c_factor]), [x], donate=True)[0])
        new_state = ScaleByFactoredRmsState(
            count=sel.rebuild(counts, "count"), v_row=sel.rebuild(rows, "v_row"),
            v_col=sel.rebuild(cols, "v_col"), v=sel.rebuild(fulls, "v"))
        return sel.rebuild(out), new_state

    return declare(GradientTransformation(init_fn, update_fn), Needs.MATRIX)
