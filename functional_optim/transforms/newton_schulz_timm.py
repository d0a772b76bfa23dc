"""timm's Muon orthogonalisation: a Newton–Schulz iteration with a coefficient triple per
step (presets from Jordan, You, Amsel et al.), a safety factor and a μP-scaled epsilon,
over matrices, conv weights (flattened, or batched over the kernel positions) and batches."""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

import torch

from .. import kernels as k
from ..base import GradientTransformation, Needs, declare, init_empty_state
from ..hyperparams import check_range
from ..tree import select
from .newton_schulz import _addmm

__all__ = ["NS_COEFFICIENT_PRESETS", "resolve_ns_coefficients", "newton_schulz_sequence", "muon_suitable",
           "muon_matrix_shape", "orthogonalize_newton_schulz_timm"]

Coefficients = tuple[float, float, float]

# timm's presets (its ``_COEFFICIENTS``): the numbers are the published ones
NS_COEFFICIENT_PRESETS: dict[str, tuple[Coefficients, ...]] = {
    # Jordan et al., https://kellerjordan.github.io/posts/muon/
    "original": ((3.4445, -4.7750, 2.0315),),
    # You (leloy), per-step optimised quintic coefficients (modded-nanogpt's train_gpt_medium)
    "quintic": ((4.0848, -6.8946, 2.9270), (3.9505, -6.3029, 2.6377), (3.7418, -5.5913, 2.3037),
                (2.8769, -3.1427, 1.2046), (2.8366, -3.0525, 1.2012)),
    # Amsel et al., Polar Express, arXiv:2505.16932 (safety 1e-2)
    "polar_express": ((8.237312490495555, -23.157747414558198, 16.680568411445915),
                      (4.082441999064835, -2.893047735332586, 0.5252849256975648),
                      (3.9263479922546582, -2.8547468034765298, 0.5318022422894988),
                      (3.2982187133085143, -2.424541981026706, 0.48632008358844075),
                      (2.2970369434552573, -1.63662558125903, 0.4002628455953627),
                      (1.8763805351440397, -1.2347896577722228, 0.35891887501668385),
                      (1.8564423485617974, -1.2132449880935525, 0.3568003487825883),
                      (1.8749994008682747, -1.2499988017229169, 0.3749994008546422)),
    # Polar Express with safety 2e-2 (modded-nanogpt's train_gpt)
    "polar_express_safer": ((8.156554524902461, -22.48329292557795, 15.878769915207462),
                            (4.0429299351667245, -2.808917465908704, 0.5000178451051299),
                            (3.8916678022926563, -2.7724841532176825, 0.5060648178503389),
                            (3.285753657755658, -2.3681294933425394, 0.46449024233003117),
                            (2.3005307116270983, -1.6111665557258408, 0.3833374427545273),
                            (1.8631210546382593, -1.2042160621002727, 0.3421879560523383),
                            (1.8382572152247512, -1.1779263289537742, 0.3396513038637379),
                            (1.8749999923301852, -1.2499999836060613, 0.374999991275876)),
}


def _is_real(x: Any) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


def _triple(x: Any, where: str) -> Coefficients:
    if isinstance(x, (str, bytes)) or not isinstance(x, Sequence) or len(x) != 3 or not all(map(_is_real, x)):
        raise ValueError(f"ns_coefficients{where} must be 3 real numbers (a, b, c), got {x!r}")
    return float(x[0]), float(x[1]), float(x[2])


def resolve_ns_coefficients(value: str | Sequence[Any]) -> tuple[Coefficients, ...]:
    """The coefficient triples of ``ns_coefficients``: a preset name (see
    ``NS_COEFFICIENT_PRESETS``), one triple ``(a, b, c)``, or a sequence of triples.

    Example:
      >>> from functional_optim.transforms.newton_schulz_timm import resolve_ns_coefficients
      >>> resolve_ns_coefficients((3, -4, 2)), len(resolve_ns_coefficients("quintic"))
      (((3.0, -4.0, 2.0),), 5)
    """
    if isinstance(value, str):
        if value not in NS_COEFFICIENT_PRESETS:
            raise ValueError(f"Unknown coefficients preset '{value}' (ns_coefficients must be one of "
                             f"{sorted(NS_COEFFICIENT_PRESETS)}, a triple or a sequence of triples)")
        return NS_COEFFICIENT_PRESETS[value]
    if not isinstance(value, Sequence) or isinstance(value, bytes):
        raise TypeError(f"ns_coefficients must be a preset name, a triple (a, b, c) or a sequence of triples, "
                        f"got {type(value).__name__}")
    if len(value) == 3 and all(map(_is_real, value)):
        return (_triple(value, ""),)
    if not value:
        raise ValueError("ns_coefficients must not be empty")
    return tuple(_triple(x, f"[{i}]") for i, x in enumerate(value))


def _mm(x: torch.Tensor, m1: torch.Tensor, m2: torch.Tensor, beta: float, alpha: float) -> torch.Tensor:
    # beta * x + alpha * m1 @ m2 rounded once (addmm, or baddbmm for a batch of matrices)
    if x.dim() == 3:
        return torch.baddbmm(x, m1, m2, beta=beta, alpha=alpha)
    return _addmm(x, m1, m2, beta, alpha)


def newton_schulz_sequence(g: torch.Tensor, coefficients: Sequence[Coefficients], ns_steps: int, eps: Any,
                           safety_factor: Any = 1.0, scale_eps: bool = False,
                           dtype: torch.dtype | None = torch.bfloat16) -> torch.Tensor:
    r"""Orthogonalise a matrix (or each matrix of a ``(batch, m, n)`` stack) as timm's
    ``zeropower_via_newtonschulz`` does, op for op in ``dtype`` (None: ``g``'s); returned in
    ``g``'s dtype.

    With :math:`(a_j, b_j, c_j)` the ``j``-th triple (the last one repeated past the end):

    .. math::

        X_0 &= G^\top \text{ if } m > n \text{ else } G, \qquad
            \epsilon' = \epsilon \sqrt{n / m} \text{ with scale\_eps, else } \epsilon \\
        X_0 &\leftarrow X_0 / \big(s \lVert X_0 \rVert_F + \epsilon'\big) \text{ with scale\_eps, else }
            X_0 / \max(s \lVert X_0 \rVert_F, \epsilon) \\
        A_j &= X_j X_j^\top, \quad B_j = b_j A_j + c_j A_j A_j, \quad X_{j+1} = a_j X_j + B_j X_j

    with :math:`s` = ``safety_factor`` and the norm per matrix.

    Example:
      >>> import torch
      >>> from functional_optim.transforms.newton_schulz_timm import newton_schulz_sequence
      >>> g = torch.tensor([[3.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
      >>> newton_schulz_sequence(g, [(3.4445, -4.7750, 2.0315)], 5, 1e-7, dtype=None).diagonal()
      tensor([0.7136, 1.0420], dtype=torch.float64)
    """
    steps = list(coefficients[:ns_steps]) + [coefficients[-1]] * max(0, ns_steps - len(coefficients))
    if scale_eps:
        eps = eps * (g.size(-1) / g.size(-2)) ** 0.5  # sqrt(d_in / d_out) of the (out, in) matrix
    x = g.to(dtype) if dtype is not None else g
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the short side: the Gram matrix is min(m, n) square
        x = x.mT
    dims = (x.dim() - 2, x.dim() - 1)
    norm = k.mul(k.unit_norms([x], dims, dtype=x.dtype), safety_factor)[0]
    norm = k.add([norm], eps)[0] if scale_eps else k.clamp([norm], min=eps)[0]
    x = k.div([x], [norm])[0].contiguous()
    for a, b, c in steps:
        gram = _mm(x.new_zeros(()).expand(*x.shape[:-1], x.size(-2)), x, x.mT, 0.0, 1.0)
        x = _mm(x, _mm(gram, gram, gram, b, c), x, a, 1.0)
    if tall:
        x = x.mT
    return x.to(g.dtype)


def muon_suitable(shape: Sequence[int], min_dim_size: int = 4, max_aspect_ratio: float = 128.0) -> bool:
    """timm's rule for the params Muon orthogonalises (the others go to its AdamW fallback):
    at least two dims larger than 1, neither of the first two of size 1 (position embeddings,
    depthwise convs), and the matrix it becomes (``(shape[0], prod(shape[1:]))``) with both
    sides >= ``min_dim_size`` and an aspect ratio <= ``max_aspect_ratio``.

    Example:
      >>> from functional_optim.transforms.newton_schulz_timm import muon_suitable
      >>> muon_suitable((64, 128)), muon_suitable((96, 3, 4, 4)), muon_suitable((4, 2048)), muon_suitable((64,))
      (True, True, False, False)
    """
    if len(shape) < 2 or sum(1 for s in shape if s > 1) < 2 or shape[0] == 1 or shape[1] == 1:
        return False
    rows, cols = shape[0], math.prod(shape[1:])
    return min(rows, cols) >= min_dim_size and max(rows, cols) / min(rows, cols) <= max_aspect_ratio


def muon_matrix_shape(shape: Sequence[int], conv_mode: str = "flatten") -> tuple[int, ...]:
    """The shape a param of ``shape`` is orthogonalised in: itself for a matrix; for
    ``(out, in, *kernel)``, ``(out, in * prod(kernel))`` ("flatten") or
    ``(prod(kernel), out, in)`` ("batched": one matrix per kernel position).

    Example:
      >>> from functional_optim.transforms.newton_schulz_timm import muon_matrix_shape
      >>> muon_matrix_shape((16, 8, 3, 3)), muon_matrix_shape((16, 8, 3, 3), "batched")
      ((16, 72), (9, 16, 8))
    """
    if len(shape) < 3:
        return tuple(shape)
    if conv_mode == "flatten":
        return shape[0], math.prod(shape[1:])
    return math.prod(shape[2:]), shape[0], shape[1]


def to_matrix(x: torch.Tensor, conv_mode: str) -> torch.Tensor:
    """``x`` reshaped to :func:`muon_matrix_shape` (a permuted view for "batched")."""
    if x.dim() < 3:
        return x
    if conv_mode == "flatten":
        return x.reshape(x.size(0), -1)
    return x.reshape(x.size(0), x.size(1), -1).permute(2, 0, 1)


def from_matrix(m: torch.Tensor, shape: Sequence[int], conv_mode: str) -> torch.Tensor:
    """The inverse of :func:`to_matrix` for a param of ``shape``."""
    if len(shape) < 3:
        return m
    if conv_mode == "batched":
        m = m.permute(1, 2, 0)
    return m.reshape(shape)


CONV_MODES = ("flatten", "batched")


def orthogonalize_newton_schulz_timm(ns_coefficients: str | Sequence[Any] = "quintic", ns_steps: int = 5,
                                     eps: float | torch.Tensor = 1e-7, safety_factor: float | torch.Tensor = 1.0,
                                     scale_eps: bool = False,
                                     conv_mode: str = "flatten", *,
                                     dtype: torch.dtype | None = torch.bfloat16) -> GradientTransformation:
    r"""Replace each update by its approximate orthogonalisation as timm's ``Muon`` computes
    it (bit for bit in bfloat16), conv weights reshaped to matrices first.

    Per leaf :math:`G` (2-D, or ``(out, in, *kernel)``), in the order computed:

    .. math::

        M &= \text{reshape}(G) \quad (\text{(out, in·k) with "flatten", (k, out, in) with "batched"}) \\
        O &= \mathrm{NS}(M) \quad (:func:`newton\_schulz\_sequence`, \text{ per matrix of the batch}) \\
        u &= \text{reshape}^{-1}(O) \text{ in } G\text{'s dtype}

    Leaves with fewer than 2 dims raise ``ValueError`` (route them elsewhere, e.g.
    ``fo.timm.muon`` does with :func:`muon_suitable`). Declares ``Needs.MATRIX``.

    Args:
      ns_coefficients: a preset ("original", "quintic", "polar_express",
        "polar_express_safer"), a triple, or a sequence of triples (one per step, the last
        repeated). Default "quintic".
      ns_steps: int >= 0, the number of steps. Default 5.
      eps: >= 0, the floor of the norm divided by (added to it with ``scale_eps``), a number
        or 0-d tensor (both round as timm's Python number). Default 1e-7.
      safety_factor: > 0, multiplies the norm (number or 0-d tensor). Default 1.0.
      scale_eps: scale ``eps`` by :math:`\sqrt{d_{in}/d_{out}}` and add it (μP). Default False.
      conv_mode: "flatten" or "batched". Default "flatten".
      dtype: the iteration's dtype, None for the update's. Default bfloat16 (timm's).

    References:
      Jordan et al., *Muon: An optimizer for hidden layers in neural networks*, 2024,
      https://kellerjordan.github.io/posts/muon/. Amsel et al., *The Polar Express*, 2025,
      arXiv:2505.16932.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.orthogonalize_newton_schulz_timm("original", dtype=None)
      >>> u, _ = tx.update({"w": torch.tensor([[3.0, 0.0], [0.0, 0.5]], dtype=torch.float64)}, tx.init(None))
      >>> torch.linalg.svdvals(u["w"])
      tensor([1.0420, 0.7136], dtype=torch.float64)
    """
    coefficients = resolve_ns_coefficients(ns_coefficients)
    if isinstance(ns_steps, bool) or not isinstance(ns_steps, int) or ns_steps < 0:
        raise ValueError(f"ns_steps must be an int >= 0, got {ns_steps!r}")
    check_range("eps", eps, 0.0)
    check_range("safety_factor", safety_factor, 0.0)
    if conv_mode not in CONV_MODES:
        raise ValueError(f"Invalid conv_mode: {conv_mode} (expected one of {CONV_MODES})")
    if not isinstance(scale_eps, bool):
        raise TypeError(f"scale_eps must be a bool, got {type(scale_eps).__name__}")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, donate, extra
        sel = select(updates)
        out = []
        for g in sel.updates:
            if g.dim() < 2:
                raise ValueError(f"orthogonalize_newton_schulz_timm needs updates with >= 2 dims, got shape "
                                 f"{tuple(g.shape)}")
            m = newton_schulz_sequence(to_matrix(g, conv_mode), coefficients, ns_steps, eps, safety_factor,
                                       scale_eps, dtype)
            out.append(from_matrix(m, g.shape, conv_mode))
        return sel.rebuild(out), state

    return declare(GradientTransformation(init_empty_state, update_fn), Needs.MATRIX)
