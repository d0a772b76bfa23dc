"""Orthogonalising each matrix update by a Newton–Schulz iteration (Muon's step direction)."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Number
from typing import Any

import torch

from .. import kernels as k
from ..base import GradientTransformation, Needs, declare, init_empty_state
from ..hyperparams import check_number, check_range
from ..tree import select

# torch.optim.Muon's defaults (Jordan et al.'s quintic coefficients)
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def _addmm(x: torch.Tensor, m1: torch.Tensor, m2: torch.Tensor, beta: Any, alpha: Any = 1.0) -> torch.Tensor:
    """``beta * x + alpha * (m1 @ m2)`` rounded once, as ``torch.addmm``.

    Python-number coefficients call ``torch.addmm`` itself (torch's kernel, bit for bit).
    addmm takes no tensor coefficients, so 0-d tensors (the adapter's compiled steps feed
    hyperparameters as tensors) form the same sum in the op-math dtype (float32 for
    bfloat16/float16: products of bfloat16 values are exact there) and round once to the
    result dtype, as addmm's kernel does. Only the product's order of accumulation can
    differ from torch's bfloat16 kernel: measured, 2 of 2310 entries one bfloat16 ulp
    apart for a 33 x 70 product, none for 128 x 64 and 64 x 200.
    """
    if isinstance(beta, Number) and isinstance(alpha, Number):
        return torch.addmm(x, m1, m2, beta=beta, alpha=alpha)
    acc = torch.promote_types(x.dtype, torch.float32)
    prod = torch.mm(m1.to(acc), m2.to(acc))
    return (prod * alpha + x.to(acc) * beta).to(x.dtype)


def newton_schulz(g: torch.Tensor, coefficients: Sequence[Any], ns_steps: int, eps: Any,
                  dtype: torch.dtype | None) -> torch.Tensor:
    """One matrix's orthogonalisation, as :func:`orthogonalize_newton_schulz` computes it
    (torch.optim.Muon's ``_zeropower_via_newtonschulz`` op for op, iterating in ``dtype``
    or, if None, in ``g``'s), returned in ``g``'s dtype.

    Example:
      >>> import torch
      >>> g = torch.tensor([[3.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
      >>> newton_schulz(g, NS_COEFFICIENTS, 5, 1e-7, None).diagonal()  # singular values near 1
      tensor([0.7136, 1.0420], dtype=torch.float64)
    """
    a, b, c = coefficients
    x = g.to(dtype) if dtype is not None else g
    wide = g.size(0) > g.size(1)
    if wide:  # iterate on the short side: the Gram matrix is min(m, n) square
        x = x.T
    norm = k.unit_norms([x], None, dtype=x.dtype)[0].reshape(())
    low = eps.to(norm.dtype) if isinstance(eps, torch.Tensor) else eps
    x = k.div([x], torch.clamp(norm, min=low))[0]
    for _ in range(ns_steps):
        gram = x @ x.T
        x = _addmm(x, _addmm(gram, gram, gram, b, c), x, a)
    if wide:
        x = x.T
    return x.to(g.dtype)


def orthogonalize_newton_schulz(ns_coefficients: tuple[Any, Any, Any] = NS_COEFFICIENTS, ns_steps: int = 5,
                                eps: float | torch.Tensor = 1e-7, *,
                                dtype: torch.dtype | None = torch.bfloat16) -> GradientTransformation:
    r"""Replace each matrix update by an approximate orthogonalisation (``U V^T`` of its SVD
    ``U S V^T``) from a quintic Newton–Schulz iteration, as ``torch.optim.Muon`` computes it.

    Per leaf (a 2-D update :math:`G`), in the order computed, with :math:`(a, b, c)` =
    ``ns_coefficients`` and every matrix in ``dtype``:

    .. math::

        X_0 &= G^\top \text{ if } G \text{ has more rows than columns, else } G \\
        X_0 &\leftarrow X_0 / \max(\lVert X_0 \rVert_F, \epsilon) \\
        A_j &= X_j X_j^\top, \quad B_j = b A_j + c A_j A_j, \quad X_{j+1} = a X_j + B_j X_j
            \qquad (j = 0, \dots, k - 1) \\
        O &= X_k^\top \text{ (if transposed) else } X_k, \text{ returned in } G\text{'s dtype}

    Each step maps every singular value :math:`\sigma` of :math:`X` to
    :math:`a\sigma + b\sigma^3 + c\sigma^5`; torch's coefficients push all of them towards
    roughly 0.7 to 1.2 within 5 steps (not exactly 1: speed over exactness). With
    ``dtype=torch.bfloat16`` (torch's choice) the result equals torch's
    ``_zeropower_via_newtonschulz`` bit for bit with Python-number coefficients (0-d
    tensor ones form addmm's sum themselves, which can differ by a bfloat16 ulp in a
    few entries; see ``_addmm``).
    ``dtype=None`` runs in the update's own dtype, e.g. float64 to differentiate through
    the step (bfloat16 rounding defeats finite-difference and high-precision checks).

    Updates that are not 2-D raise ``ValueError`` (torch's message); complex or sparse
    ones ``RuntimeError``. Declares ``Needs.MATRIX``.

    Args:
      ns_coefficients: :math:`(a, b, c)`, three numbers or 0-d tensors. Default
        ``(3.4445, -4.7750, 2.0315)``.
      ns_steps: :math:`k`, an int in [0, 100). Default 5.
      eps: :math:`\epsilon` >= 0, the smallest norm divided by. Default 1e-7.
      dtype: the dtype the iteration runs in, or None for the update's. Default bfloat16.

    References:
      Jordan et al., *Muon: An optimizer for hidden layers in neural networks*, 2024,
      https://kellerjordan.github.io/posts/muon/ (the quintic iteration and its coefficients).

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.orthogonalize_newton_schulz(dtype=None)
      >>> g = torch.tensor([[3.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
      >>> u, _ = tx.update({"w": g}, tx.init(None))
      >>> torch.linalg.svdvals(u["w"])  # both singular values pushed towards 1
      tensor([1.0420, 0.7136], dtype=torch.float64)
    """
    if not isinstance(ns_coefficients, (tuple, list)) or len(ns_coefficients) != 3:
        raise ValueError("Coefficients must be a tuple of exactly 3 values")
    for i, coefficient in enumerate(ns_coefficients):
        check_number(f"ns_coefficients[{i}]", coefficient)
    if isinstance(ns_steps, bool) or not isinstance(ns_steps, int) or ns_steps < 0:
        raise ValueError(f"ns_steps must be an int >= 0, got {ns_steps!r}")
    if ns_steps >= 100:
        raise ValueError("Number of steps must be less than 100 for computational efficiency")
    check_range("eps", eps, 0.0)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
    coefficients = tuple(ns_coefficients)

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, donate, extra
        sel = select(updates)
        for g in sel.updates:
            if g.is_complex():
                raise RuntimeError("Muon does not support complex parameters")
            if g.is_sparse:
                raise RuntimeError("Muon does not support sparse gradients")
            if g.dim() != 2:
                raise ValueError("Input tensor gradient must be a 2D matrix")
        out = [newton_schulz(g, coefficients, ns_steps, eps, dtype) for g in sel.updates]
        return sel.rebuild(out), state

    return declare(GradientTransformation(init_empty_state, update_fn), Needs.MATRIX)
