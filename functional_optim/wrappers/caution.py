"""``cautious``: the "Cautious Optimizers" mask, as a wrapper usable around any transform."""

from __future__ import annotations

from typing import Any

import torch

from .. import kernels as k
from ..base import GradientTransformation, Needs, declare, needs_of_all
from ..hyperparams import check_range, concrete
from ..tree import select

__all__ = ["cautious", "caution_mask"]


def _real(x: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(x) if x.is_complex() else x


def caution_mask(updates: list[torch.Tensor], grads: list[torch.Tensor],
                 min_scale: float | torch.Tensor = 1e-3) -> list[torch.Tensor]:
    r"""The rescaled caution masks of aligned lists of updates and gradients.

    Per tensor: :math:`\phi = [u \odot g > 0] / \max(\operatorname{mean}([u \odot g > 0]), s)`,
    in the update's (real) dtype; complex tensors are masked per real/imaginary component,
    as timm views them as real. The mean is a per-tensor reduction
    (:func:`functional_optim.kernels.means`, segment-wise on flat buffers). The mask has
    no derivative (a comparison); derivatives flow through ``u`` when it is multiplied in.

    Args:
      updates: the proposed updates :math:`u` (before the learning rate's sign flip).
      grads: the gradients :math:`g` they are compared with.
      min_scale: :math:`s`, the clamp of the mean from below. Default 1e-3 (timm's).

    Example:
      >>> import torch
      >>> from functional_optim.wrappers.caution import caution_mask
      >>> caution_mask([torch.tensor([1.0, -1.0, 2.0, 0.5])], [torch.tensor([1.0, 1.0, 1.0, -1.0])])
      [tensor([2., 0., 2., 0.])]
    """
    reals = [_real(u) for u in updates]
    prods = k.mul(reals, [_real(g).to(r.dtype) for g, r in zip(grads, reals)])
    masks = [(p > 0).to(r.dtype) for p, r in zip(prods, reals)]
    scales = k.clamp(k.means(masks, None), min=min_scale)
    return k.div(masks, scales)


def cautious(inner: GradientTransformation, min_scale: float | torch.Tensor = 1e-3) -> GradientTransformation:
    r"""Mask ``inner``'s update where its sign disagrees with the incoming gradient
    ("Cautious Optimizers"), as timm's ``caution=True`` does.

    Per tensor, with :math:`g` the updates this wrapper receives and :math:`u` what
    ``inner`` returns for them:

    .. math::

        \phi &= \mathbb{1}[u \odot g > 0] \\
        \phi &\leftarrow \phi / \max(\operatorname{mean}(\phi), s) \\
        u &\leftarrow u \odot \phi

    (complex tensors per real/imaginary component; the mean is over the whole tensor).
    ``inner``'s state is returned unchanged by the mask (timm masks the update, never the
    stored momentum), so the wrapper adds no state of its own: the state *is* ``inner``'s.

    Where it goes in a chain to reproduce timm: around the transform whose output timm
    masks, before the learning rate flips the sign (``u`` and ``g`` must point the same
    way when they agree), and after ``maximize``'s negation (timm compares with the
    negated gradient). Decoupled weight decay stays outside (timm does not mask it).
    E.g. timm's ``AdamWLegacy(caution=True)`` is
    ``chain(cautious(scale_by_adam(...)), scale_by_learning_rate(lr), <decoupled decay>)``;
    ``RMSpropTF(caution=True)`` is ``cautious(trace(momentum))`` after the RMS scaling.
    timm's Lamb, Adafactor, LaProp, ... mask the same quantity :math:`\exp\_avg \cdot
    \text{grad}`; because the mask only reads signs, any positive per-tensor or per-element
    scaling applied inside ``inner`` (bias corrections, ``1/(\sqrt{v}+\epsilon)``) gives the
    same mask. AdamP and SGDP use a spherical variant inside their projection
    (:func:`functional_optim.scale_invariant_projection` with ``caution=True``).

    Declares the most ``inner`` needs and at least ``Needs.PER_PARAM`` (the per-tensor mean).

    Args:
      inner: the transform whose update is masked.
      min_scale: :math:`s` > 0, the lower clamp of the mask's mean (timm: 1e-3).

    References:
      Liang et al., *Cautious Optimizers: Improving Training with One Line of Code*, 2024,
      arXiv:2411.16085.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.cautious(fo.trace(0.9))
      >>> params = {"w": torch.zeros(4)}
      >>> state = tx.init(params)
      >>> u, state = tx.update({"w": torch.tensor([1.0, 1.0, -1.0, -1.0])}, state)
      >>> u, state = tx.update({"w": torch.tensor([1.0, -2.0, -1.0, 2.0])}, state)
      >>> u["w"]  # buf = [1.9, -1.1, -1.9, 1.1]: all agree, mean 1
      tensor([ 1.9000, -1.1000, -1.9000,  1.1000])
      >>> u, state = tx.update({"w": torch.tensor([1.0, 1.0, 1.0, 1.0])}, state)
      >>> u["w"]  # buf = [2.71, 0.01, -0.71, 1.99]: 3 of 4 agree, kept ones scaled by 4/3
      tensor([3.6133, 0.0133, -0.0000, 2.6533])
    """
    if not isinstance(inner, GradientTransformation):
        raise TypeError(f"inner must be a GradientTransformation, got {type(inner).__name__}")
    check_range("min_scale", min_scale, 0.0)
    if concrete(min_scale) == 0.0:
        raise ValueError(f"Invalid min_scale: {min_scale} (expected min_scale > 0)")

    def init_fn(params: Any) -> Any:
        return inner.init(params)

    def update_fn(updates, state, params=None, **extra):
        donate = bool(extra.get("donate", False))
        sel = select(updates)
        grads = sel.updates
        if donate and k.writes_in_place(True):  # inner may overwrite the updates: keep g
            grads = [g.clone() for g in grads]
        out, new_state = inner.update(updates, state, params, **extra)
        osel = select(out)
        us = osel.updates
        if not us:
            return out, new_state
        masks = caution_mask(us, grads, min_scale)
        masked = [k.mul([_real(u)], [m], donate=donate)[0] for u, m in zip(us, masks)]
        masked = [torch.view_as_complex(m) if u.is_complex() else m for m, u in zip(masked, us)]
        return osel.rebuild(masked), new_state

    return declare(GradientTransformation(init_fn, update_fn), needs_of_all(inner, at_least=Needs.PER_PARAM))
