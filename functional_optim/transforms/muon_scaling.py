"""The step sizes of timm's Muon and AdaMuon: a factor of each orthogonalised matrix's shape,
and AdaMuon's second moment of the orthogonalised directions with its RMS alignment."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation, Needs, declare, init_empty_state
from ..hyperparams import check_range
from ..tree import select, zeros_like
from .newton_schulz_timm import CONV_MODES, muon_matrix_shape

__all__ = ["MUON_ADJUST_LR_FNS", "ADAMUON_ADJUST_LR_FNS", "muon_lr_scale", "adamuon_lr_scale",
           "scale_by_muon_shape", "ScaleByAdamuonState", "scale_by_adamuon"]

MUON_ADJUST_LR_FNS = (None, "original", "match_rms_adamw", "rms_to_rms")
ADAMUON_ADJUST_LR_FNS = (None, "match_rms_adamw", "rms_to_rms", "rsqrt_in")


def _spatial(shape: Sequence[int], conv_mode: str, normalize_spatial: bool) -> float:
    # batched convs: one matrix per kernel position, normalised by sqrt(#positions)
    if conv_mode == "batched" and normalize_spatial and len(shape) >= 3:
        return math.prod(shape[2:]) ** -0.5
    return 1.0


def _sides(shape: Sequence[int], conv_mode: str) -> tuple[int, int]:
    # (out, in) of the matrix a param is orthogonalised as; (1, 1) for fewer than 2 dims (timm's)
    return tuple(muon_matrix_shape(shape, conv_mode)[-2:]) if len(shape) >= 2 else (1, 1)


def muon_lr_scale(shape: Sequence[int], adjust_lr_fn: str | None = "match_rms_adamw", conv_mode: str = "flatten",
                  normalize_spatial: bool = True) -> float:
    """timm's Muon factor of a param of ``shape``, from the ``(out, in)`` sides of the matrix
    it is orthogonalised as (:func:`~functional_optim.transforms.newton_schulz_timm.muon_matrix_shape`):
    ``sqrt(max(1, out/in))`` ("original"), ``0.2 sqrt(max(out, in))`` ("match_rms_adamw"),
    ``sqrt(out/in)`` ("rms_to_rms"), 1 (None); times ``prod(kernel)**-0.5`` for batched
    convs with ``normalize_spatial``.

    Example:
      >>> from functional_optim.transforms.muon_scaling import muon_lr_scale
      >>> muon_lr_scale((16, 4), "original"), muon_lr_scale((4, 25)), muon_lr_scale((8, 8, 2, 2), None, "batched")
      (2.0, 1.0, 0.5)
    """
    out, inp = _sides(shape, conv_mode)
    if adjust_lr_fn == "original":
        scale = max(1, out / inp) ** 0.5
    elif adjust_lr_fn == "match_rms_adamw":
        scale = 0.2 * max(out, inp) ** 0.5
    elif adjust_lr_fn == "rms_to_rms":
        scale = (out / inp) ** 0.5
    elif adjust_lr_fn is None:
        scale = 1.0
    else:
        raise ValueError(f'Invalid scaling function "{adjust_lr_fn}" for Muon (adjust_lr_fn must be one of '
                         f"{MUON_ADJUST_LR_FNS})")
    return scale * _spatial(shape, conv_mode, normalize_spatial)


def adamuon_lr_scale(shape: Sequence[int], adjust_lr_fn: str | None = "match_rms_adamw", conv_mode: str = "flatten",
                     normalize_spatial: bool = True) -> tuple[float, bool]:
    """timm's AdaMuon factor of a param of ``shape`` and whether the update is RMS-aligned
    first: ``(0.2 sqrt(numel), True)`` ("match_rms_adamw"), ``(sqrt(out/in), False)``
    ("rms_to_rms"), ``(in**-0.5, False)`` ("rsqrt_in"), ``(1, False)`` (None), with
    ``(out, in)`` as in :func:`muon_lr_scale` and the same spatial normalisation.

    Example:
      >>> from functional_optim.transforms.muon_scaling import adamuon_lr_scale
      >>> adamuon_lr_scale((4, 25)), adamuon_lr_scale((4, 16), "rsqrt_in")
      ((2.0, True), (0.25, False))
    """
    out, inp = _sides(shape, conv_mode)
    if adjust_lr_fn == "match_rms_adamw":
        scale, rms = 0.2 * math.prod(shape) ** 0.5, True
    elif adjust_lr_fn == "rms_to_rms":
        scale, rms = (out / inp) ** 0.5, False
    elif adjust_lr_fn == "rsqrt_in":
        scale, rms = inp ** -0.5, False
    elif adjust_lr_fn is None:
        scale, rms = 1.0, False
    else:
        raise ValueError(f'Invalid scaling function "{adjust_lr_fn}" for AdaMuon (adjust_lr_fn must be one of '
                         f"{ADAMUON_ADJUST_LR_FNS})")
    return scale * _spatial(shape, conv_mode, normalize_spatial), rms


def _check_mode(conv_mode: Any, normalize_spatial: Any) -> None:
    if conv_mode not in CONV_MODES:
        raise ValueError(f"Invalid conv_mode: {conv_mode} (expected one of {CONV_MODES})")
    if not isinstance(normalize_spatial, bool):
        raise TypeError(f"normalize_spatial must be a bool, got {type(normalize_spatial).__name__}")


def scale_by_muon_shape(adjust_lr_fn: str | None = "match_rms_adamw", conv_mode: str = "flatten",
                        normalize_spatial: bool = True) -> GradientTransformation:
    r"""Multiply each (orthogonalised) update by timm's Muon factor of its shape,
    :math:`u \leftarrow s(\text{shape})\, u` with :math:`s` = :func:`muon_lr_scale`.

    Args:
      adjust_lr_fn: None, "original", "match_rms_adamw" or "rms_to_rms". Default "match_rms_adamw".
      conv_mode: "flatten" or "batched" (the matrices a conv weight was orthogonalised as). Default "flatten".
      normalize_spatial: batched convs also scaled by ``prod(kernel)**-0.5``. Default True.

    References:
      Liu et al., *Muon is Scalable for LLM Training*, 2025, arXiv:2502.16982
      ("match_rms_adamw"). Pethick et al., *Training Deep Learning Models with Norm-Constrained
      LMOs* (Scion), 2025, arXiv:2502.07529 ("rms_to_rms").

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_muon_shape("original")
      >>> tx.update({"w": torch.ones(16, 4)}, tx.init(None))[0]["w"][0]
      tensor([2., 2., 2., 2.])
    """
    if adjust_lr_fn not in MUON_ADJUST_LR_FNS:
        muon_lr_scale((1, 1), adjust_lr_fn)  # raises, naming the choices
    _check_mode(conv_mode, normalize_spatial)

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        sel = select(updates)
        factors = [muon_lr_scale(tuple(u.shape), adjust_lr_fn, conv_mode, normalize_spatial) for u in sel.updates]
        return sel.rebuild([k.mul([u], f, donate=donate)[0] for u, f in zip(sel.updates, factors)]), state

    return declare(GradientTransformation(init_empty_state, update_fn), Needs.LEAVES)  # reads each leaf's shape


class ScaleByAdamuonState(NamedTuple):
    """State of :func:`scale_by_adamuon` (timm's per-param keys in brackets)."""

    count: Any  # tree of 0-d int32: updates each leaf has received [step]
    nu: Any  # tree like params: the average of the squared orthogonalised update [exp_avg_sq]


def scale_by_adamuon(b2: float | torch.Tensor = 0.95, eps: float | torch.Tensor = 1e-7,
                     adjust_lr_fn: str | None = "match_rms_adamw", conv_mode: str = "flatten",
                     normalize_spatial: bool = True) -> GradientTransformation:
    r"""AdaMuon's adaptive scaling of orthogonalised updates, as timm computes it.

    Per leaf :math:`O` (an orthogonalised update) at its step :math:`t`, with
    :math:`(s, \rho)` = :func:`adamuon_lr_scale` of its shape, in the order computed:

    .. math::

        v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, O^2 \\
        d &= \sqrt{v_t} + \epsilon \text{ if } \rho \text{ else } \sqrt{v_t / (1 - \beta_2^t)} + \epsilon \\
        u &= O / d, \qquad u \leftarrow u / (\lVert u \rVert_F + \epsilon) \text{ if } \rho \\
        u &\leftarrow s\, u

    (with :math:`\rho` the RMS alignment makes the bias correction unnecessary).

    Args:
      b2: :math:`\beta_2` in [0, 1). Default 0.95.
      eps: :math:`\epsilon` >= 0. Default 1e-7.
      adjust_lr_fn: None, "match_rms_adamw", "rms_to_rms" or "rsqrt_in". Default "match_rms_adamw".
      conv_mode: "flatten" or "batched". Default "flatten".
      normalize_spatial: batched convs also scaled by ``prod(kernel)**-0.5``. Default True.

    References:
      Si et al., *AdaMuon: Adaptive Muon Optimizer*, 2025, arXiv:2507.11005.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_adamuon(adjust_lr_fn=None, eps=0.0)
      >>> u, state = tx.update({"w": torch.full((2, 2), 0.5)}, tx.init({"w": torch.zeros(2, 2)}))
      >>> u["w"]  # at t = 1: O / |O|
      tensor([[1., 1.],
              [1., 1.]])
    """
    check_range("b2", b2, 0.0, 1.0)
    check_range("eps", eps, 0.0)
    if adjust_lr_fn not in ADAMUON_ADJUST_LR_FNS:
        adamuon_lr_scale((1, 1), adjust_lr_fn)  # raises, naming the choices
    _check_mode(conv_mode, normalize_spatial)

    def init_fn(params):
        return ScaleByAdamuonState(count=steps.leaf_counts(params), nu=zeros_like(params))

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        sel = select(updates, count=state.count, nu=state.nu)
        g = sel.updates
        if not g:
            return updates, state
        counts = steps.increment(sel["count"], donate=donate)
        bc2 = k.scalars_for(steps.per_leaf(lambda t: 1 - b2 ** t, counts, g), g)
        nu = k.addcmul(k.mul(sel["nu"], b2, donate=donate), g, g, 1 - b2, donate=True)
        out = []
        for i, o in enumerate(g):
            scale, rms = adamuon_lr_scale(tuple(o.shape), adjust_lr_fn, conv_mode, normalize_spatial)
            second = [nu[i]] if rms else k.div([nu[i]], bc2[i])
            u = k.div([o], k.add(k.sqrt(second), eps, donate=True))
            if rms:
                u = k.div(u, k.add(k.norms(u), eps, donate=True))
            out.append(k.mul(u, scale, donate=True)[0])
        return sel.rebuild(out), ScaleByAdamuonState(count=sel.rebuild(counts, "count"), nu=sel.rebuild(nu, "nu"))

    return declare(GradientTransformation(init_fn, update_fn), Needs.LEAVES)  # reads each leaf's shape
