"""PSGD's Kronecker-factored preconditioner: its factors, einsum expressions and update.

A tensor gradient ``G`` of shape ``(n_1, ..., n_k)`` is preconditioned by
``P = Q^H Q`` with ``Q = Q_1 (x) ... (x) Q_k``: each ``Q_i`` is an upper-triangular
``n_i x n_i`` matrix, or a diagonal stored as a vector (dims above ``max_size``, size-1
dims, tensors of fewer than ``min_ndim_triangular`` dims, or chosen by
``memory_save_mode``). All products with ``Q`` are einsum contractions whose subscripts
are built once per shape (:func:`kron_expressions`). The functions here are pure: they
return new factors and never write into their inputs. They compute in the op order of
timm's ``Kron`` (and of Xi-Lin Li's psgd_torch it descends from), so trajectories match.
"""

from __future__ import annotations

import string
from typing import Any, NamedTuple, Sequence

import torch

# a dim's three einsum letters are i, i + 13, i + 26 of a-zA-Z: 13 dims at most
_LETTERS = string.ascii_lowercase + string.ascii_uppercase
MAX_DIMS = 13
MEMORY_SAVE_MODES = (None, "one_diag", "smart_one_diag", "all_diag")
# added to the normalisers of the factor steps (the smallest normal bfloat16, timm's choice)
TINY = torch.finfo(torch.bfloat16).tiny


class KronExpressions(NamedTuple):
    """The einsum subscripts for one gradient shape (see :func:`kron_expressions`)."""

    diagonal: tuple[bool, ...]  # per dim: whether its factor is a diagonal (vector)
    exprA: str  # Q_1 ... Q_k, G -> A = Q G (each factor applied along its dim)
    exprGs: tuple[str, ...]  # per dim: contracts two tensors over every other dim
    exprP: str  # conj(Q_1..Q_k), Q_1..Q_k, G -> Q^H Q G


def diagonal_dims(shape: Sequence[int], max_size: int, min_ndim_triangular: int,
                  memory_save_mode: str | None) -> tuple[bool, ...]:
    """Which dims of ``shape`` get a diagonal factor.

    A dim is diagonal when its size is 1 or above ``max_size``, when the tensor has fewer
    than ``min_ndim_triangular`` dims, or by ``memory_save_mode``: ``"one_diag"`` the
    largest dim (the last of equal largest), ``"smart_one_diag"`` the largest dim only if
    strictly larger than every other, ``"all_diag"`` every dim, None none.

    Example:
      >>> from functional_optim.transforms.kron_preconditioner import diagonal_dims
      >>> diagonal_dims((3, 5000, 1), 2048, 2, None), diagonal_dims((4, 6), 2048, 2, "one_diag")
      ((False, True, True), (False, True))
    """
    if memory_save_mode not in MEMORY_SAVE_MODES:
        raise ValueError(f"Invalid memory_save_mode: {memory_save_mode}, must be one of "
                         "[None, 'one_diag', 'all_diag'] (memory_save_mode must be None, 'one_diag', "
                         "'smart_one_diag' or 'all_diag')")
    shape = tuple(int(s) for s in shape)
    chosen = [memory_save_mode == "all_diag"] * len(shape)
    if memory_save_mode in ("one_diag", "smart_one_diag") and shape:
        # timm takes the first of numpy's argsort reversed; for 13 dims or fewer numpy sorts
        # by insertion (stable), so among equal largest sizes that is the last dim
        largest = max(i for i, s in enumerate(shape) if s == max(shape))
        ordered = sorted(shape)
        if memory_save_mode == "one_diag" or (len(shape) >= 2 and ordered[-1] > ordered[-2]):
            chosen[largest] = True
    return tuple(size == 1 or size > max_size or len(shape) < min_ndim_triangular or d
                 for size, d in zip(shape, chosen))


def kron_expressions(diagonal: Sequence[bool]) -> KronExpressions:
    """The einsum subscripts for a gradient whose dims have the factor kinds ``diagonal``
    (from :func:`diagonal_dims`; ``()`` for a 0-d gradient).

    For dim ``i`` with letters ``a = L[i]``, ``b = L[i+13]``, ``c = L[i+26]``: a triangular
    factor is indexed ``ab`` in ``exprA`` (contracting ``b`` with the gradient) and
    ``ab``/``ac`` in ``exprP``; a diagonal one ``a`` (broadcast). ``exprGs[i]`` contracts
    two tensors over every dim but ``i``, giving a matrix (triangular) or a vector (diagonal).

    Example:
      >>> from functional_optim.transforms.kron_preconditioner import kron_expressions
      >>> e = kron_expressions((False, True))
      >>> e.exprA, e.exprGs, e.exprP
      ('an,b,nb->ab', ('nb,Ab->nA', 'ao,ao->o'), 'an,o,aA,o,Ao->no')
    """
    k = len(diagonal)
    if k > MAX_DIMS:
        raise ValueError(f"Got tensor with dim {k}; Einstein runs out of letters! "
                         f"(Kron supports tensors of at most {MAX_DIMS} dims)")
    if k == 0:
        return KronExpressions((), ",->", (",->",), ",,->")
    factors_a, grad_a, out_a = [], "", ""
    exprGs = []
    left_p, right_p, grad_p, out_p = [], [], "", ""
    for i, diag in enumerate(diagonal):
        a, b, c = _LETTERS[i], _LETTERS[i + 13], _LETTERS[i + 26]
        # the other dims keep their own letters; dim i is renamed in each operand
        first = "".join(b if j == i else _LETTERS[j] for j in range(k))
        if diag:
            factors_a.append(a)
            grad_a, out_a = grad_a + a, out_a + a
            exprGs.append(f"{first},{first}->{b}")
            left_p.append(b)
            right_p.append(b)
            grad_p, out_p = grad_p + b, out_p + b
        else:
            second = "".join(c if j == i else _LETTERS[j] for j in range(k))
            factors_a.append(a + b)
            grad_a, out_a = grad_a + b, out_a + a
            exprGs.append(f"{first},{second}->{b}{c}")
            left_p.append(a + b)
            right_p.append(a + c)
            grad_p, out_p = grad_p + c, out_p + b
    exprA = ",".join(factors_a) + "," + grad_a + "->" + out_a
    exprP = ",".join(left_p) + "," + ",".join(right_p) + "," + grad_p + "->" + out_p
    return KronExpressions(tuple(diagonal), exprA, tuple(exprGs), exprP)


def init_factors(shape: Sequence[int], diagonal: Sequence[bool], scale: Any, dtype: torch.dtype,
                 device: torch.device | str | None = None) -> list[torch.Tensor]:
    r"""The initial factors: :math:`s^{1/k}` times ones (diagonal) or the identity
    (triangular), so that :math:`Q = s I`; a 0-d gradient gets one 0-d factor :math:`s`.

    Example:
      >>> import torch
      >>> from functional_optim.transforms.kron_preconditioner import init_factors
      >>> [q.tolist() for q in init_factors((2, 3), (False, True), 4.0, torch.float64)]
      [[[2.0, 0.0], [0.0, 2.0]], [2.0, 2.0, 2.0]]
    """
    # (cast: a 0-d tensor scale would promote a 0-d factor to its own dtype)
    if len(shape) == 0:
        return [(scale * torch.ones((), dtype=dtype, device=device)).to(dtype)]
    per_dim = scale ** (1 / len(shape))
    return [(per_dim * (torch.ones(n, dtype=dtype, device=device) if d
                        else torch.eye(n, dtype=dtype, device=device))).to(dtype)
            for n, d in zip(shape, diagonal)]


def norm_lower_bound(a: torch.Tensor) -> torch.Tensor:
    r"""A cheap lower bound of the spectral norm of the matrix ``a`` (0 for a zero matrix).

    With :math:`m = \max|a_{ij}|` and :math:`\hat a = a / m`: take the column (or row) of
    :math:`\hat a` with the largest squared norm, :math:`x` its product with :math:`\hat a`,
    and return :math:`m\,\| (x / \|x\|)\,\hat a^H \|` (or :math:`m\,\|\hat a^H x/\|x\|\|`).

    Example:
      >>> import torch
      >>> from functional_optim.transforms.kron_preconditioner import norm_lower_bound
      >>> norm_lower_bound(torch.tensor([[3.0, 0.0], [0.0, 1.0]]))
      tensor(3.)
    """
    max_abs = torch.linalg.vector_norm(a, float("inf"))
    return torch.where(max_abs > 0, _lower_bound(a, max_abs), max_abs)


def _lower_bound(a: torch.Tensor, max_abs: torch.Tensor) -> torch.Tensor:
    a = a / max_abs
    squares = torch.real(a * a.conj())
    col_best, col = torch.max(torch.sum(squares, dim=0), 0)
    row_best, row = torch.max(torch.sum(squares, dim=1), 0)
    if col_best > row_best:  # a host branch on the data, as psgd does
        x = a[:, col].conj() @ a
        return max_abs * torch.linalg.vector_norm((x / torch.linalg.vector_norm(x)) @ a.H)
    x = a @ a[row].conj()
    return max_abs * torch.linalg.vector_norm(a.H @ (x / torch.linalg.vector_norm(x)))


def _solve_upper_right(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``x @ inv(q)`` over the last dim of ``x``, ``q`` upper triangular, solved in float32
    whatever the dtypes (timm's choice: float64 in, float32-accurate out)."""
    dtype = x.dtype
    x32, q32 = x.to(torch.float32), q.to(torch.float32)
    out = torch.linalg.solve_triangular(q32, x32.reshape(-1, x32.size(-1)), upper=True, left=False)
    return out.reshape_as(x32).to(dtype)


def _upper(a: torch.Tensor) -> torch.Tensor:
    """``torch.triu(a)`` as an elementwise select: the same values, without triu's
    parallel region (measured 10-15 ms per tiny matrix on 2 busy cores, 3 us serial)."""
    n = a.shape[-1]
    rows = torch.arange(a.shape[-2], device=a.device)
    cols = torch.arange(n, device=a.device)
    return torch.where(rows[:, None] <= cols[None, :], a, torch.zeros((), dtype=a.dtype, device=a.device))


def balance(factors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    r"""The factors rescaled to equal max-abs norms with the same Kronecker product:
    :math:`Q_i \leftarrow Q_i\, (\prod_j \|Q_j\|_\infty)^{1/k} / \|Q_i\|_\infty`.

    Example:
      >>> import torch
      >>> from functional_optim.transforms.kron_preconditioner import balance
      >>> [q.tolist() for q in balance([torch.tensor([4.0]), torch.tensor([1.0])])]
      [[2.0], [2.0]]
    """
    norms = torch.stack([torch.linalg.vector_norm(q, float("inf")) for q in factors])
    scales = norms.prod() ** (1 / len(factors)) / norms
    return [q * scales[i] for i, q in enumerate(factors)]


def precondition(factors: Sequence[torch.Tensor], expr: KronExpressions, g: torch.Tensor) -> torch.Tensor:
    r""":math:`Q^H Q\, g`: the gradient preconditioned (one einsum, ``expr.exprP``).

    Example:
      >>> import torch
      >>> from functional_optim.transforms.kron_preconditioner import kron_expressions, precondition
      >>> e = kron_expressions((True,))
      >>> precondition([torch.tensor([2.0, 3.0])], e, torch.tensor([1.0, 1.0]))
      tensor([4., 9.])
    """
    return torch.einsum(expr.exprP, *[q.conj() for q in factors], *factors, g)


def update_factors(factors: Sequence[torch.Tensor], expr: KronExpressions, g: torch.Tensor, v: torch.Tensor,
                   precond_lr: Any) -> list[torch.Tensor]:
    r"""One step of PSGD's preconditioner fitting on the probe ``v`` (Gaussian) and the
    gradient (or momentum) ``g``; returns the new factors.

    In the order computed, with :math:`k` = ``g.dim()``:

    .. math::

        A &= Q\,g \quad(\texttt{exprA}), \qquad
        B^H = v^H Q^{-1} \quad(\text{each factor in turn: a division (diagonal) or a
              float32 right triangular solve, then the dim moved last}) \\
        T_1^{(i)} &= A\,A^H,\ T_2^{(i)} = B^H{}^H B^H \text{ contracted over all dims but } i
              \quad(\texttt{exprGs[i]}) \\
        \Delta_i &= \mu_Q (T_1 - T_2) \odot Q_i / (\|T_1 + T_2\|_\infty + \tau)
              \quad\text{(diagonal)} \\
        \Delta_i &= \mathrm{triu}(\mu_Q (T_1 - T_2)) / (\mathrm{lb}\|T_1 + T_2\|_2 + \tau)\; Q_i
              \quad\text{(triangular, lb: } \texttt{norm\_lower\_bound)} \\
        Q_i &\leftarrow Q_i - \Delta_i

    with :math:`\mu_Q` = ``precond_lr`` and :math:`\tau` the smallest normal bfloat16.

    Example:
      >>> import torch
      >>> from functional_optim.transforms.kron_preconditioner import kron_expressions, update_factors
      >>> e = kron_expressions((True,))
      >>> update_factors([torch.ones(2)], e, torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0]), 0.1)
      [tensor([0.9000, 1.0250])]
    """
    a = torch.einsum(expr.exprA, *factors, g)
    order = g.dim()
    dims = tuple(range(order))
    conj_b = torch.permute(v.conj(), dims[1:] + dims[:1])
    for i, q in enumerate(factors):
        conj_b = conj_b / q if q.dim() < 2 else _solve_upper_right(conj_b, q)
        if i < order - 1:
            conj_b = torch.transpose(conj_b, i, order - 1)
    new = []
    for q, expr_g in zip(factors, expr.exprGs):
        term1 = torch.einsum(expr_g, a, a.conj())
        term2 = torch.einsum(expr_g, conj_b.conj(), conj_b)
        step = (term1 - term2) * precond_lr
        if q.dim() < 2:
            step = step * q
            step = step / (torch.linalg.vector_norm(term1 + term2, float("inf")) + TINY)
        else:
            step = _upper(step)
            step = step / (norm_lower_bound(term1 + term2) + TINY)
            step = step @ q
        new.append((q - step).to(q.dtype))  # a 0-d tensor precond_lr must not promote a 0-d factor
    return new
