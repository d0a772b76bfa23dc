"""NovoGrad's layer-wise normalisation: each param's update divided by the root of a
moving average of its squared gradient norm (one scalar of state per param)."""

from __future__ import annotations

from typing import Any, NamedTuple

import optree
import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation, Needs, declare
from ..hyperparams import check_range
from ..tree import select


class ScaleByNovogradState(NamedTuple):
    """State of :func:`scale_by_novograd`."""

    count: Any  # tree of 0-d int32: updates each leaf has received (MONAI's per-param `step`)
    nu: Any  # tree of 0-d floats: moving average of each leaf's squared gradient norm
    nu_max: Any  # tree of 0-d floats: running maximum of nu with amsgrad, else None


def _nu_dtype(p: torch.Tensor, nu_dtype: torch.dtype | None) -> torch.dtype:
    # the real dtype of the param, at least float32: a squared norm of bfloat16 entries
    # needs float32's range and precision (MONAI keeps it in the default dtype, float32)
    if nu_dtype is not None:
        return nu_dtype
    return k.norm_dtype([p])


def scale_by_novograd(b2: float | torch.Tensor = 0.98, eps: float | torch.Tensor = 1e-8, amsgrad: bool = False,
                      *, nu_dtype: torch.dtype | None = None) -> GradientTransformation:
    r"""Divide each param's update by the root of a moving average of its squared norm
    (NovoGrad's layer-wise second moment, as ``monai.optimizers.Novograd`` computes it).

    Per leaf (one param, "layer"), with :math:`g_t` its update at the leaf's step :math:`t`:

    .. math::

        n_t &= \lVert g_t \rVert_2^2 = \textstyle\sum_i |g_{t,i}|^2 \\
        v_t &= \begin{cases} n_t & \text{if } v_{t-1} = 0 \\
                             \beta_2 v_{t-1} + (1 - \beta_2)\, n_t & \text{otherwise} \end{cases} \\
        \hat v_t &= \max(\hat v_{t-1}, v_t) \text{ with amsgrad, else } v_t \\
        u_t &= g_t / (\sqrt{\hat v_t} + \epsilon)

    :math:`v_0 = \hat v_0 = 0`, so the first step takes the squared norm itself (no bias
    correction), and so does any step while :math:`v` is still exactly 0 (gradients that
    were all zero so far), as MONAI does. Each :math:`v` is a single number per param, so
    the state costs one scalar per param. Complex entries count as :math:`|z|^2`. A leaf
    whose update is None is skipped (its state does not change).

    The momentum, weight decay and learning rate of NovoGrad are separate transforms
    (see :func:`functional_optim.novograd`).

    Declares ``Needs.PER_PARAM``: the squared norms are per-param reductions
    (:func:`kernels.norms <functional_optim.kernels.norms>`), and :math:`v` (and
    :math:`\hat v`) are made with :func:`kernels.param_scalars
    <functional_optim.kernels.param_scalars>`, so on the adapter's flat buffers they hold
    one value per param (a ``(nblocks, 1)`` tensor per buffer) and the compiled step is one
    graph whatever the number of params. The step counter is one per leaf; on a flat
    buffer, one for all its params (they step together: a step where only some params
    have gradients hands the group over to per-param leaves first).

    Args:
      b2: decay :math:`\beta_2` of the second moment, in [0, 1). Default 0.98 (MONAI's).
      eps: :math:`\epsilon`, added to the root, >= 0. Default 1e-8.
      amsgrad: divide by the running maximum of :math:`v` (Reddi et al., 2018). Default False.
      nu_dtype: dtype of :math:`v` (default: the param's real dtype, at least float32).

    References:
      Ginsburg et al., *Stochastic Gradient Methods with Layer-wise Adaptive Moments for
      Training of Deep Networks*, 2019, arXiv:1905.11286.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_novograd()
      >>> params = {"w": torch.zeros(2)}
      >>> u, state = tx.update({"w": torch.tensor([3.0, 4.0])}, tx.init(params))
      >>> u["w"], state.nu["w"]  # v_1 = ||g||^2 = 25, u = g / 5
      (tensor([0.6000, 0.8000]), tensor(25.))
    """
    check_range("b2", b2, 0.0, 1.0)
    check_range("eps", eps, 0.0)
    if not isinstance(amsgrad, bool):
        raise TypeError(f"amsgrad must be a bool, got {type(amsgrad).__name__}")

    def init_fn(params):
        leaves, spec = optree.tree_flatten(params, none_is_leaf=True)
        present = [p for p in leaves if p is not None]

        def zeros():
            # one scalar per param, also on flat buffers (one per param there, not per buffer)
            made = iter(k.param_scalars(present, 0.0, [_nu_dtype(p, nu_dtype) for p in present]))
            return optree.tree_unflatten(spec, [None if p is None else next(made) for p in leaves])

        return ScaleByNovogradState(count=steps.leaf_counts(params), nu=zeros(),
                                    nu_max=zeros() if amsgrad else None)

    def moments(v, n, *v_max):
        # v, n (and v_max): one entry per leaf, computed once for all leaves
        sq = n * n
        ema = k.add([v * b2], [sq], 1 - b2)[0]
        v = torch.where(v == 0, sq, ema)  # exactly 0 until a nonzero gradient: take it whole
        second = torch.maximum(v_max[0], v) if amsgrad else v
        denom = k.sqrt([second])[0] + eps  # sqrt with a finite derivative at 0
        return (v, second, denom) if amsgrad else (v, denom)

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        trees = dict(count=state.count, nu=state.nu)
        if amsgrad:
            trees["nu_max"] = state.nu_max
        sel = select(updates, **trees)
        g = sel.updates
        if not g:
            return updates, state
        nus = sel["nu"]
        columns = [nus] + ([sel["nu_max"]] if amsgrad else [])
        acc = k.norm_dtype(g + nus)  # one accumulation dtype for the per-leaf scalars
        out = k.leafwise(moments, nus, k.norms(g, acc), *columns[1:], dtype=acc)
        new_nu = k.cast(out[0], [v.dtype for v in nus])
        new_max = k.cast(out[1], [v.dtype for v in nus]) if amsgrad else None
        denom = out[-1]
        # a 0-d update would be promoted by a 0-d denominator of another dtype: cast back
        u = k.cast(k.div(g, denom, donate=donate), [x.dtype for x in g])
        counts = steps.increment(sel["count"], donate=donate)
        new_state = ScaleByNovogradState(
            count=sel.rebuild(counts, "count"), nu=sel.rebuild(new_nu, "nu"),
            nu_max=sel.rebuild(new_max, "nu_max") if amsgrad else None)
        return sel.rebuild(u), new_state

    return declare(GradientTransformation(init_fn, update_fn), Needs.PER_PARAM)
