"""Updating bfloat16 params without losing small updates: stochastic rounding of the new
params, or Kahan-compensated summation (a compensation buffer carries what rounding lost)."""

from __future__ import annotations

from typing import Any, NamedTuple

import optree
import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation, Needs, declare, mark_elementwise
from ..tree import map as tree_map
from ..tree import select

__all__ = ["stochastic_rounding_updates", "StochasticRoundingUpdatesState", "kahan_summation",
           "KahanSummationState"]


class StochasticRoundingUpdatesState(NamedTuple):
    """State of :func:`stochastic_rounding_updates`."""

    count: torch.Tensor  # 0-d int32: updates so far (the step of the random bits)


class KahanSummationState(NamedTuple):
    """State of :func:`kahan_summation`."""

    compensation: Any  # tree like params (their dtype, or the one chosen): what rounding lost so far


def _need_params(name: str, params: Any) -> None:
    if params is None:
        raise ValueError(f"{name} needs params: call update(updates, state, params)")


def _compute_dtype(p: torch.Tensor) -> torch.dtype:
    # 16-bit params are summed in float32, wider ones in their own dtype
    return torch.promote_types(p.dtype, torch.float32)


def stochastic_rounding_updates(seed: int = 0) -> GradientTransformation:
    r"""Turn each update of a bfloat16 param into one that lands the param on the
    stochastically rounded sum (the last transform of a chain, after the learning rate).

    Per bfloat16 param :math:`p` with incoming update :math:`u` (other dtypes pass through):

    .. math::

        t &= \operatorname{round}_{bf16}(p + u) \quad \text{(in float32, stochastically:}
            E[t] = p + u) \\
        u &\leftarrow t - p

    so ``apply_updates`` gives exactly :math:`t` whenever :math:`t - p` is a bfloat16
    number: always in the regime this is for, updates smaller than about :math:`2^8` ulps
    of the param, where round-to-nearest would drop them (:math:`|u| < \text{ulp}(p)/2`
    leaves :math:`p` unchanged). The random bits are a hash of ``(seed, step, leaf
    path, element index)`` (:func:`kernels.stochastic_round
    <functional_optim.kernels.stochastic_round>`): reproducible, also compiled and under
    ``vmap``; keyed by each leaf's path in the tree, so this declares ``Needs.LEAVES``.
    Derivatives pass straight through the rounding.

    Args:
      seed: the integer seed of the random bits. Default 0.

    References:
      Zamirai et al., *Revisiting BFloat16 Training*, 2020, arXiv:2010.06192.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.stochastic_rounding_updates()
      >>> params = {"w": torch.ones(10000, dtype=torch.bfloat16)}
      >>> u, _ = tx.update({"w": torch.full((10000,), 2.0 ** -9)}, tx.init(params), params)
      >>> new = fo.apply_updates(params, u)["w"].float()  # 1 + 2**-9 is a quarter ulp above 1
      >>> sorted(set(new.tolist())), round((float(new.mean()) - 1) * 2 ** 9, 1)  # mean about 1 + 2**-9
      ([1.0, 1.0078125], 1.0)
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")

    def init_fn(params):
        return StochasticRoundingUpdatesState(count=steps.zero_count(steps.first_device(params)))

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del donate, extra
        _need_params("stochastic_rounding_updates", params)
        sel = select(updates, params=params)
        count = state.count + 1
        out = []
        paths = optree.tree_paths(updates, none_is_leaf=True)
        present = [path for path, u in zip(paths, optree.tree_leaves(updates, none_is_leaf=True)) if u is not None]
        keys = k.stream_keys(seed, count, k.path_salts(present)) if present else []
        for u, p, key in zip(sel.updates, sel["params"], keys):  # one key per leaf, by its path
            if p.dtype != torch.bfloat16:
                out.append(u)
                continue
            p32 = p.float()
            target = k.stochastic_round([p32 + u.float()], [key])[0]
            out.append((target.float() - p32).to(p.dtype))
        return sel.rebuild(out), StochasticRoundingUpdatesState(count=count)

    return declare(GradientTransformation(init_fn, update_fn), Needs.LEAVES)


def kahan_summation(compensation_dtype: torch.dtype | None = None) -> GradientTransformation:
    r"""Kahan-compensated updates of low-precision params: the rounding error of each
    param update is kept in a compensation buffer and added to the next update (the last
    transform of a chain, after the learning rate).

    Per param :math:`p` with incoming update :math:`u` and compensation :math:`c`
    (computed in float32 for 16-bit params, else in the param's dtype):

    .. math::

        y &= u + c \\
        t &= \operatorname{round}_{p}(p + y) \quad \text{(the new param, to nearest)} \\
        c &\leftarrow y - (t - p) \\
        u &\leftarrow t - p

    so ``apply_updates`` gives :math:`t` exactly (when :math:`t - p` is representable in
    the param's dtype: updates below about :math:`2^8` ulps of the param) and the sum of
    the params' changes tracks the sum of the updates to the compensation's precision:
    bfloat16 params then follow float32 training closely where plain bfloat16 updates
    stall. Elementwise (runs on the adapter's flat buffers).

    Args:
      compensation_dtype: dtype of :math:`c` (default: each param's dtype, 2 bytes per
        entry for bfloat16 params).

    References:
      Kahan, *Further remarks on reducing truncation errors*, CACM 8(1), 1965.
      Zamirai et al., *Revisiting BFloat16 Training*, 2020, arXiv:2010.06192.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.kahan_summation()
      >>> params = {"w": torch.ones(1, dtype=torch.bfloat16)}
      >>> state = tx.init(params)
      >>> for _ in range(4):  # four updates of a quarter ulp: lost one by one, kept together
      ...     u, state = tx.update({"w": torch.full((1,), 2.0 ** -9)}, state, params)
      ...     params = fo.apply_updates(params, u)
      >>> params["w"]
      tensor([1.0078], dtype=torch.bfloat16)
    """
    if compensation_dtype is not None and not (isinstance(compensation_dtype, torch.dtype)
                                               and compensation_dtype.is_floating_point):
        raise TypeError(f"compensation_dtype must be a floating torch.dtype or None, got {compensation_dtype!r}")

    def init_fn(params):
        return KahanSummationState(
            compensation=tree_map(lambda p: torch.zeros_like(p, dtype=compensation_dtype or p.dtype), params))

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del donate, extra
        _need_params("kahan_summation", params)
        sel = select(updates, params=params, compensation=state.compensation)
        out, comp = [], []
        for u, p, c in zip(sel.updates, sel["params"], sel["compensation"]):
            dtype = _compute_dtype(p)
            pw = p.to(dtype)
            y = u.to(dtype) + c.to(dtype)
            t = (pw + y).to(p.dtype).to(dtype)
            step = t - pw
            comp.append((y - step).to(c.dtype))
            out.append(step.to(p.dtype))
        return sel.rebuild(out), KahanSummationState(compensation=sel.rebuild(comp, "compensation"))

    return mark_elementwise(GradientTransformation(init_fn, update_fn))
