"""Transforms for sparse COO gradients (``nn.Embedding(sparse=True)``): SparseAdam's moments."""

from __future__ import annotations

from typing import Any, NamedTuple

import optree
import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation
from ..hyperparams import check_range
from ..tree import select, zeros_like

DENSE_GRAD_ERROR = "SparseAdam does not support dense gradients, please consider Adam instead"


class ScaleBySparseAdamState(NamedTuple):
    """State of :func:`scale_by_sparse_adam`."""

    count: Any  # tree of 0-d int32: updates each leaf has received (torch's per-param `step`)
    mu: Any  # tree like params (dense): first moment, touched only at gradient indices
    nu: Any  # tree like params (dense): second moment, touched only at gradient indices


def _check_params(params: Any) -> None:
    paths, leaves, _ = optree.tree_flatten_with_path(params)
    complex_at = [p for p, x in zip(paths, leaves) if isinstance(x, torch.Tensor) and x.is_complex()]
    sparse_at = [p for p, x in zip(paths, leaves) if isinstance(x, torch.Tensor) and x.is_sparse]
    if sparse_at:
        raise ValueError(f"Sparse params at {sparse_at}: SparseAdam requires dense parameter tensors")
    if complex_at:
        raise ValueError(f"Complex params at {complex_at}: SparseAdam does not support complex parameters")


def scale_by_sparse_adam(b1: float | torch.Tensor = 0.9, b2: float | torch.Tensor = 0.999,
                         eps: float | torch.Tensor = 1e-8) -> GradientTransformation:
    r"""Adam's scaling for sparse COO gradients, with torch.optim.SparseAdam's numerics.

    Each gradient is coalesced (duplicate indices summed); only the entries ``I`` it holds
    are read and written, everything else (state and params) stays untouched:

    .. math::

       m_I \leftarrow m_I + (1 - b_1)(g_I - m_I),\quad
       v_I \leftarrow v_I + (1 - b_2)(g_I^2 - v_I),\quad
       u_I = \frac{\sqrt{1 - b_2^t}}{1 - b_1^t} \cdot \frac{m_I}{\sqrt{v_I} + \epsilon}

    with ``t`` the leaf's update count (advanced even when the gradient holds no entries)
    and ``eps`` *not* bias-corrected (unlike :func:`scale_by_adam`). The returned updates
    are sparse COO tensors with the gradient's (coalesced) indices;
    :func:`functional_optim.apply_updates` adds them to dense params.

    Dense gradients raise torch's RuntimeError; complex or sparse params raise ValueError
    at ``init`` (as torch at construction). Not compilable with
    ``torch.compile(fullgraph=True)``: dynamo refuses sparse tensors
    ("Attempted to wrap sparse Tensor", torch 2.13); with ``fullgraph=False`` it runs
    correctly but split into many small graphs around the sparse operations. Not
    ``vmap``-able either (no batching rules for sparse COO).

    Args:
      b1: decay of the first moment, in [0, 1). Default 0.9.
      b2: decay of the second moment, in [0, 1). Default 0.999.
      eps: added to ``sqrt(v)``, >= 0. Default 1e-8.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_sparse_adam()
      >>> table = torch.zeros(4, 2)
      >>> g = torch.sparse_coo_tensor([[1, 1]], torch.ones(2, 2), (4, 2),  # row 1 twice
      ...                             check_invariants=True)
      >>> u, state = tx.update(g, tx.init(table))
      >>> u.to_dense().round(decimals=4)
      tensor([[0., 0.],
              [1., 1.],
              [0., 0.],
              [0., 0.]])
    """
    check_range("b1", b1, 0.0, 1.0)
    check_range("b2", b2, 0.0, 1.0)
    check_range("eps", eps, 0.0)

    def init_fn(params):
        _check_params(params)
        return ScaleBySparseAdamState(count=steps.leaf_counts(params), mu=zeros_like(params),
                                      nu=zeros_like(params))

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        sel = select(updates, count=state.count, mu=state.mu, nu=state.nu)
        if any(not g.is_sparse for g in sel.updates):
            raise RuntimeError(DENSE_GRAD_ERROR)
        grads = [g.coalesce() for g in sel.updates]  # the update is non-linear: unique indices
        g = [x._values() for x in grads]
        counts = steps.increment(sel["count"], donate=donate)
        step_size = steps.per_leaf(lambda t: (1 - b2 ** t).sqrt() / (1 - b1 ** t), counts, g)

        mu_old = k.gather_sparse(sel["mu"], grads)
        nu_old = k.gather_sparse(sel["nu"], grads)
        # torch's order: (g - m) * (1 - b1) and (g**2 - v) * (1 - b2), then added to the old values
        mu_new = k.add(k.mul(k.sub(g, mu_old), 1 - b1, donate=True), mu_old, donate=True)
        nu_new = k.mul(k.sub(k.mul(g, g), nu_old, donate=True), 1 - b2, donate=True)
        nu_new = k.add(nu_new, nu_old, donate=True)
        mu = k.scatter_sparse(sel["mu"], grads, mu_new, donate=donate)
        nu = k.scatter_sparse(sel["nu"], grads, nu_new, donate=donate)

        denom = k.add(k.sqrt(nu_new, donate=True), eps, donate=True)  # nu_new is copied into nu
        values = k.mul(k.div(mu_new, denom, donate=True), step_size, donate=True)
        new_state = ScaleBySparseAdamState(count=sel.rebuild(counts, "count"),
                                           mu=sel.rebuild(mu, "mu"), nu=sel.rebuild(nu, "nu"))
        return sel.rebuild(k.sparse_like(grads, values)), new_state

    return GradientTransformation(init_fn, update_fn)
