"""``scale_invariant_projection``: AdamP's and SGDP's projection of an update off the
radial direction of scale-invariant weights (with their weight decay and caution)."""

from __future__ import annotations

from typing import Any

import torch

from .. import kernels as k
from ..base import GradientTransformation, Needs, declare, needs_of_all
from ..hyperparams import check_range, concrete
from ..tree import select
from .caution import caution_mask

__all__ = ["scale_invariant_projection"]


def _rowsum(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return x.sum(dim=dims, keepdim=True)


def _project(x: torch.Tensor, p_n: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    # x minus its component along the unit direction p_n of each unit
    return x - p_n * _rowsum(p_n * x, dims)


def scale_invariant_projection(inner: GradientTransformation, delta: float | torch.Tensor = 0.1,
                               wd_ratio: float | torch.Tensor = 0.1, eps: float | torch.Tensor = 1e-8,
                               weight_decay: float | torch.Tensor = 0.0, *,
                               momentum: float | torch.Tensor = 0.0,
                               caution: bool = False) -> GradientTransformation:
    r"""Project ``inner``'s update off the params' radial direction where the gradient is
    (nearly) orthogonal to the params: AdamP's and SGDP's rule, as timm computes it.

    Per param :math:`p` with at least 2 dimensions, with :math:`g` the updates this wrapper
    receives and :math:`d` what ``inner`` returns for them, two views are tried in turn:
    the *channel* view (one unit per slice ``p[i]``) and the *layer* view (the whole tensor
    as one unit). For a view with units of :math:`n` entries:

    .. math::

        c &= \max_{\text{units}} |\cos(g, p)| \quad (\text{norms clamped below by } \epsilon) \\
        \text{if } c < \delta / \sqrt{n}: \quad
        \hat p &= p / (\lVert p \rVert_{\text{unit}} + \epsilon), \quad
        d \leftarrow d - \hat p \langle \hat p, d \rangle_{\text{unit}}, \quad r = \text{wd\_ratio}

    The first view that passes is used; if none does (and for params of 0 or 1 dimension)
    :math:`d` is kept and :math:`r = 1`. With ``caution`` a projected :math:`d` is then
    masked "spherically": :math:`\phi = [d \odot g_\perp > 0]` with
    :math:`g_\perp = g - \hat p \langle \hat p, g \rangle`, :math:`d \leftarrow d \odot \phi /
    \max(\operatorname{mean}\phi, 10^{-3})`, projected once more; an unprojected :math:`d` gets
    the standard caution mask (:func:`functional_optim.cautious`). Finally the weight decay
    term is added: :math:`u = d + \lambda r p / (1 - m)` (:math:`m` = ``momentum``, SGDP's
    correction; 0 for AdamP). The view is chosen with ``torch.where`` (no host sync), so all
    variants are computed. ``inner``'s state is returned as is (no state of its own).

    In a chain it goes before the learning rate, around the moment transform
    (``scale_by_timm_adam`` for AdamP, ``trace_from_zero`` for SGDP); the projection is
    linear and the masks only read signs, so a positive per-param scale inside ``inner``
    (AdamP's ``1 / bc1``) commutes with it. Declares ``Needs.MATRIX`` (per-channel
    reductions over the param's own shape).

    Args:
      inner: the transform producing :math:`d`.
      delta: :math:`\delta` >= 0, the cosine threshold (scaled by :math:`1/\sqrt{n}`). Default 0.1.
      wd_ratio: the weight decay ratio :math:`r` of projected params, >= 0. Default 0.1.
      eps: :math:`\epsilon` >= 0 of the cosine and of the normalisation. Default 1e-8.
      weight_decay: :math:`\lambda` >= 0. Default 0.
      momentum: :math:`m` in [0, 1): the decay is divided by :math:`1 - m` (SGDP). Default 0.
      caution: timm's spherical / standard caution (``cadamp``, ``csgdp``). Default False.

    References:
      Heo et al., *AdamP: Slowing Down the Slowdown for Momentum Optimizers on
      Scale-invariant Weights*, ICLR 2021, arXiv:2006.08217; Liang et al., *Cautious
      Optimizers*, 2024, arXiv:2411.16085.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_invariant_projection(fo.identity(), delta=0.1)
      >>> params = {"w": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}
      >>> g = {"w": torch.tensor([[0.0, 1.0], [1.0, 0.0]])}  # orthogonal to each row of w
      >>> tx.update(g, tx.init(params), params)[0]["w"]  # the update is already tangent
      tensor([[0., 1.],
              [1., 0.]])
      >>> tx.update({"w": torch.ones(2, 2)}, tx.init(params), params)[0]["w"]  # not orthogonal: kept
      tensor([[1., 1.],
              [1., 1.]])
    """
    if not isinstance(inner, GradientTransformation):
        raise TypeError(f"inner must be a GradientTransformation, got {type(inner).__name__}")
    check_range("delta", delta, 0.0)
    check_range("wd_ratio", wd_ratio, 0.0)
    check_range("eps", eps, 0.0)
    check_range("weight_decay", weight_decay, 0.0)
    check_range("momentum", momentum, 0.0, 1.0)
    if not isinstance(caution, bool):
        raise TypeError(f"caution must be a bool, got {type(caution).__name__}")
    decay = not (concrete(weight_decay) == 0.0 and not isinstance(weight_decay, torch.Tensor))

    def one(p: torch.Tensor, g: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, Any]:
        standard = k.mul([d], caution_mask([d], [g]))[0] if caution else d
        if p.dim() <= 1:
            return standard, None
        candidates = []
        for dims in (tuple(range(1, p.dim())), tuple(range(p.dim()))):
            n = 1
            for a in dims:
                n *= p.shape[a]
            g_norm = k.unit_norms([g], dims, dtype=g.dtype)[0]
            p_norm = k.unit_norms([p], dims, dtype=p.dtype)[0]
            cos = _rowsum(g / g_norm.clamp(min=eps) * (p / p_norm.clamp(min=eps)), dims).abs()
            passes = cos.max() < delta / n ** 0.5
            p_n = p / (p_norm + eps)
            out = _project(d, p_n, dims)
            if caution:
                g_perp = _project(g, p_n, dims)
                out = _project(k.mul([out], caution_mask([out], [g_perp]))[0], p_n, dims)
            candidates.append((passes, out))
        (pass_c, out_c), (pass_l, out_l) = candidates
        result = torch.where(pass_c, out_c, torch.where(pass_l, out_l, standard))
        return result, pass_c | pass_l

    def update_fn(updates, state, params=None, **extra):
        if params is None:
            raise ValueError("scale_invariant_projection needs params: call update(updates, state, params)")
        donate = bool(extra.get("donate", False))
        sel = select(updates, params=params)
        grads = sel.updates
        if donate and k.writes_in_place(True):  # inner may overwrite the updates: keep g
            grads = [g.clone() for g in grads]
        out, new_state = inner.update(updates, state, params, **extra)
        osel = select(out, params=params)
        results = []
        for p, g, d in zip(osel["params"], grads, osel.updates):
            u, projected = one(p, g.to(d.dtype), d)
            if decay:
                factor = weight_decay / (1 - momentum)
                if projected is not None:
                    unit = torch.ones((), dtype=k.scalar_dtype(p), device=p.device)
                    factor = factor * torch.where(projected, wd_ratio * unit, unit)
                u = k.add([u], [p.to(u.dtype)], factor)[0]
            results.append(u)
        return osel.rebuild(results), new_state

    return declare(GradientTransformation(inner.init, update_fn), needs_of_all(inner, at_least=Needs.MATRIX))
