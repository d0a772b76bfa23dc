"""Transforms for row-sparse gradients (``nn.Embedding(sparse=True)``): SparseAdam's moments.

Two gradient forms per leaf: a sparse COO tensor (the eager, sparse-cost path) or a
:class:`SparseRows` ``(indices, values)`` pair of dense tensors (the ``torch.compile`` path:
dynamo refuses sparse tensors, as inputs and when built inside the compiled function).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import optree
import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation
from ..hyperparams import check_range
from ..tree import PyTree, select, zeros_like

DENSE_GRAD_ERROR = "SparseAdam does not support dense gradients, please consider Adam instead"


class SparseRows(NamedTuple):
    """A row-sparse gradient as two dense tensors, the form ``torch.compile`` can take.

    Row ``indices[j]`` (along dim 0 of the param) receives ``values[j]``; indices may repeat
    (their rows are summed, as a sparse tensor's ``coalesce`` does) and need not be sorted.
    It is what ``nn.Embedding(sparse=True)`` writes into ``.grad`` as a COO tensor, without
    the sparse layout: build it outside the compiled region with :meth:`from_coo` (cheap,
    no coalescing) and pass it in place of the gradient to :func:`scale_by_sparse_adam` /
    :func:`functional_optim.sparse_adam`. With a fixed number of entries ``nnz`` the
    compiled update is traced once (a changing ``nnz`` costs one recompile, after which
    dynamo treats it as dynamic; ``nnz`` 0 and 1 are specialised apart). Indices must lie in ``[0, param.shape[0])``; this is
    not checked (it would need a host sync): eagerly ``index_add`` raises on a bad index.
    Only transforms that know this type accept it (:func:`scale_by_sparse_adam` and the
    ``maximize`` negation of :func:`functional_optim.sparse_adam`); others would see its
    two tensors as two leaves. The updates they return are dense tensors.

    Fields:
      indices: 1-D int64 tensor of ``nnz`` row indices.
      values: tensor of shape ``(nnz, *param.shape[1:])`` in the param's dtype.

    Example:
      >>> import torch, functional_optim as fo
      >>> from functional_optim.transforms.sparse import SparseRows
      >>> emb = torch.nn.Embedding(4, 2, sparse=True)
      >>> emb(torch.tensor([1, 3, 1])).sum().backward()
      >>> rows = SparseRows.from_coo(emb.weight.grad)
      >>> rows.indices, rows.values.shape
      (tensor([1, 3, 1]), torch.Size([3, 2]))
      >>> torch.equal(rows.to_coo(4).to_dense(), emb.weight.grad.to_dense())
      True
    """

    indices: torch.Tensor  # (nnz,) int64: the row (index along dim 0 of the param) of each entry
    values: torch.Tensor  # (nnz, *param.shape[1:]): the gradient rows; repeated rows are summed

    @classmethod
    def from_coo(cls, grad: torch.Tensor) -> SparseRows:
        """The rows of a sparse COO gradient with one sparse dimension (as
        ``nn.Embedding(sparse=True)`` produces), coalesced or not. The fields are views of
        ``grad``'s indices and values: nothing is copied or summed.

        Args:
          grad: a sparse COO tensor with ``sparse_dim() == 1``.
        """
        if not isinstance(grad, torch.Tensor) or grad.layout != torch.sparse_coo:
            raise TypeError(f"grad must be a sparse COO tensor, got "
                            f"{grad.layout if isinstance(grad, torch.Tensor) else type(grad).__name__}")
        if grad.sparse_dim() != 1:
            raise ValueError(f"grad must have one sparse dimension (rows of dim 0), got "
                             f"sparse_dim()={grad.sparse_dim()}")
        return cls(grad._indices()[0], grad._values())

    def to_coo(self, num_rows: int) -> torch.Tensor:
        """The same gradient as an (uncoalesced) sparse COO tensor of ``num_rows`` rows.

        Args:
          num_rows: the size of dim 0 of the param.
        """
        shape = (num_rows,) + tuple(self.values.shape[1:])
        return torch.sparse_coo_tensor(self.indices.unsqueeze(0), self.values, shape, check_invariants=False)


def _is_sparse_rows(x: Any) -> bool:
    """Whether ``x`` is a :class:`SparseRows` (the ``is_leaf`` for flattening updates trees
    that hold them: optree would otherwise see its two tensors as two leaves)."""
    return isinstance(x, SparseRows)


def _flatten_updates(updates: PyTree) -> tuple[list, optree.PyTreeSpec]:
    """The leaves and structure of an updates tree, each :class:`SparseRows` one leaf
    (None counting as a leaf, as ``functional_optim.tree.select`` flattens)."""
    return optree.tree_flatten(updates, is_leaf=_is_sparse_rows, none_is_leaf=True)


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
    r"""Adam's scaling for row-sparse gradients, with torch.optim.SparseAdam's numerics.

    Duplicate indices of a gradient are summed (torch coalesces); only the entries ``I`` it
    holds are changed, everything else (state and params) stays untouched:

    .. math::

       m_I \leftarrow m_I + (1 - b_1)(g_I - m_I),\quad
       v_I \leftarrow v_I + (1 - b_2)(g_I^2 - v_I),\quad
       u_I = \frac{\sqrt{1 - b_2^t}}{1 - b_1^t} \cdot \frac{m_I}{\sqrt{v_I} + \epsilon}

    with ``t`` the leaf's update count (advanced even when the gradient holds no entries)
    and ``eps`` *not* bias-corrected (unlike :func:`scale_by_adam`).

    Each gradient leaf takes one of two forms:

    * a **sparse COO tensor** (``p.grad`` of ``nn.Embedding(sparse=True)``): coalesced, and
      only its entries are read and written (sparse cost). The update is a sparse COO
      tensor with the coalesced indices. Not compilable with
      ``torch.compile(fullgraph=True)``: dynamo refuses sparse tensors, as inputs
      ("Attempted to wrap sparse Tensor") and when built inside the compiled function
      (``torch.sparse_coo_tensor`` is skipped), torch 2.13.
    * a :class:`SparseRows` ``(indices, values)`` (e.g. ``SparseRows.from_coo(p.grad)``,
      computed outside the compiled region): plain dense tensors with static shapes, so
      the update compiles with ``fullgraph=True`` and is traced once for a fixed ``nnz``.
      The update is a **dense** tensor shaped like the param, zero on untouched rows
      (``apply_updates`` then leaves those rows bit-identical). Cost: param-sized
      elementwise work per step (the gradient is summed into a dense zero buffer, the moments
      are computed everywhere and kept only on touched rows with ``torch.where``), which
      inductor fuses into about one pass over ``p, m, v``; the COO form stays the
      sparse-cost path for eager use. Rows are the unit: a touched row has every element
      of it updated, as a COO gradient with one sparse dimension does.

    Dense gradients raise torch's RuntimeError; complex or sparse params raise ValueError
    at ``init`` (as torch at construction); a :class:`SparseRows` whose shapes or dtype do
    not fit its param raises ValueError/TypeError. The COO form is not ``vmap``-able (no
    batching rules for sparse COO); the :class:`SparseRows` form works under
    ``torch.func`` (e.g. ``grad`` with respect to a learning rate through the steps).

    Args:
      b1: decay of the first moment, in [0, 1). Default 0.9.
      b2: decay of the second moment, in [0, 1). Default 0.999.
      eps: added to ``sqrt(v)``, >= 0. Default 1e-8.

    Example:
      >>> import torch, functional_optim as fo
      >>> from functional_optim.transforms.sparse import SparseRows
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
      >>> rows = SparseRows(torch.tensor([1, 1]), torch.ones(2, 2))  # the same gradient
      >>> u, state = tx.update(rows, tx.init(table))  # compilable; a dense update
      >>> u.round(decimals=4)
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
        leaves, spec = _flatten_updates(updates)
        # select over a tree holding each SparseRows' values in its place (same structure)
        sel = select(optree.tree_unflatten(spec, [x.values if _is_sparse_rows(x) else x for x in leaves]),
                     count=state.count, mu=state.mu, nu=state.nu)
        grads = [leaves[i] for i in sel.index]
        rows_at = [j for j, g in enumerate(grads) if _is_sparse_rows(g)]
        coo_at = [j for j, g in enumerate(grads) if not _is_sparse_rows(g)]
        if any(not grads[j].is_sparse for j in coo_at):
            raise RuntimeError(DENSE_GRAD_ERROR)
        mus, nus = sel["mu"], sel["nu"]
        for j in rows_at:
            _check_rows(grads[j], mus[j])
        coo = {j: grads[j].coalesce() for j in coo_at}  # the update is non-linear: unique indices
        like = [grads[j].values if j in rows_at else coo[j]._values() for j in range(len(grads))]
        counts = steps.increment(sel["count"], donate=donate)
        step_size = steps.per_leaf(lambda t: (1 - b2 ** t).sqrt() / (1 - b1 ** t), counts, like)

        new_u, new_mu, new_nu = [None] * len(grads), list(mus), list(nus)
        for at, step in ((coo_at, _coo_step), (rows_at, _rows_step)):
            if at:
                gs = [coo[j] for j in at] if step is _coo_step else [grads[j] for j in at]
                u, m, v = step(gs, [mus[j] for j in at], [nus[j] for j in at],
                               [step_size[j] for j in at], b1, b2, eps, donate)
                for n, j in enumerate(at):
                    new_u[j], new_mu[j], new_nu[j] = u[n], m[n], v[n]
        new_state = ScaleBySparseAdamState(count=sel.rebuild(counts, "count"),
                                           mu=sel.rebuild(new_mu, "mu"), nu=sel.rebuild(new_nu, "nu"))
        return sel.rebuild(new_u), new_state

    return GradientTransformation(init_fn, update_fn)


def _check_rows(rows: SparseRows, like: torch.Tensor) -> None:
    # shapes and dtypes only (static under torch.compile); index values are not read
    idx, values = rows
    if not isinstance(idx, torch.Tensor) or not isinstance(values, torch.Tensor):
        raise TypeError("updates: SparseRows fields must be tensors, got "
                        f"({type(idx).__name__}, {type(values).__name__})")
    if idx.dtype != torch.int64 or idx.dim() != 1:
        raise TypeError(f"updates: SparseRows.indices must be a 1-D int64 tensor, got {idx.dim()}-D {idx.dtype}")
    if like.dim() == 0:
        raise ValueError("updates: a SparseRows gradient needs a param with at least one dimension (rows)")
    if values.shape != idx.shape[:1] + like.shape[1:]:
        raise ValueError(f"updates: SparseRows.values must have shape (nnz, *param.shape[1:]) = "
                         f"{tuple(idx.shape[:1] + like.shape[1:])}, got {tuple(values.shape)}")
    if values.dtype != like.dtype:
        raise TypeError(f"updates: SparseRows.values must have the param's dtype {like.dtype}, got {values.dtype}")


def _coo_step(grads, mus, nus, step_size, b1, b2, eps, donate):
    # coalesced COO gradients: read and write the state only at their indices (torch's order)
    g = [x._values() for x in grads]
    mu_old = k.gather_sparse(mus, grads)
    nu_old = k.gather_sparse(nus, grads)
    # torch's order: (g - m) * (1 - b1) and (g**2 - v) * (1 - b2), then added to the old values
    mu_new = k.add(k.mul(k.sub(g, mu_old), 1 - b1, donate=True), mu_old, donate=True)
    nu_new = k.mul(k.sub(k.mul(g, g), nu_old, donate=True), 1 - b2, donate=True)
    nu_new = k.add(nu_new, nu_old, donate=True)
    mu = k.scatter_sparse(mus, grads, mu_new, donate=donate)
    nu = k.scatter_sparse(nus, grads, nu_new, donate=donate)

    denom = k.add(k.sqrt(nu_new, donate=True), eps, donate=True)  # nu_new is copied into nu
    values = k.mul(k.div(mu_new, denom, donate=True), step_size, donate=True)
    return k.sparse_like(grads, values), mu, nu


def _rows_step(rows, mus, nus, step_size, b1, b2, eps, donate):
    # SparseRows: dense, static-shape math; new values kept only on the touched rows
    g = k.rows_to_dense(mus, [r.indices for r in rows], [r.values for r in rows])  # duplicates summed
    touched = k.row_masks(mus, [r.indices for r in rows])
    # the same order as torch: (g - m) * (1 - b1) + m, (g**2 - v) * (1 - b2) + v
    mu_c = k.add(k.mul(k.sub(g, mus), 1 - b1, donate=True), mus, donate=True)
    nu_c = k.mul(k.sub(k.mul(g, g), nus, donate=True), 1 - b2, donate=True)
    nu_c = k.add(nu_c, nus, donate=True)
    mu = k.where(touched, mu_c, mus)  # untouched rows keep their state bit for bit
    nu = k.where(touched, nu_c, nus)
    if donate:
        mu, nu = k.copy(mus, mu), k.copy(nus, nu)
    # in place only where autograd allows it (sqrt saves its output): torch.func.grad works
    denom = k.add(k.sqrt(nu_c, donate=True), eps, donate=donate)
    u = k.mul(k.div(mu_c, denom, donate=True), step_size, donate=True)
    return k.where(touched, u, [0.0] * len(u)), mu, nu
