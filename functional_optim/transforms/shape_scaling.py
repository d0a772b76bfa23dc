"""A learning rate scaled by each matrix's shape (Muon's lr adjustment)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .. import kernels as k
from ..base import GradientTransformation, Needs, declare, init_empty_state
from ..hyperparams import check_number, check_range
from ..tree import select

ADJUST_LR_FNS = (None, "original", "match_rms_adamw")


def shape_lr_ratio(shape: Sequence[int], adjust_lr_fn: str | None = None) -> float:
    """The factor ``torch.optim.Muon`` multiplies its lr by for a param of ``shape`` (rows
    ``A = shape[0]``, columns ``B = shape[1]``): ``sqrt(max(1, A / B))`` for None or
    ``"original"`` (Jordan et al.), ``0.2 * sqrt(max(A, B))`` for ``"match_rms_adamw"``
    (Liu et al.: the update's RMS then matches AdamW's, about 0.2).

    Example:
      >>> from functional_optim.transforms.shape_scaling import shape_lr_ratio
      >>> shape_lr_ratio((16, 4)), shape_lr_ratio((4, 16)), shape_lr_ratio((4, 16), "match_rms_adamw")
      (2.0, 1.0, 0.8)
    """
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    raise ValueError(f"Adjust learning rate function {adjust_lr_fn} is not supported")


def scale_by_shape_adjusted_lr(learning_rate: float | torch.Tensor,
                               adjust_lr_fn: str | None = None) -> GradientTransformation:
    r"""Multiply each leaf's update by the learning rate times a factor of the leaf's shape,
    as ``torch.optim.Muon`` adjusts its lr per matrix.

    Per leaf of shape :math:`(A, B, \dots)`, in the order computed:

    .. math::

        \eta' &= \eta \cdot s(A, B), \qquad
            s = \sqrt{\max(1, A / B)} \ (\text{None, "original"}), \quad
            s = 0.2 \sqrt{\max(A, B)} \ (\text{"match\_rms\_adamw"}) \\
        u &\leftarrow \eta'\, u

    The factor is a Python double per shape (as torch's); the output is not negated.
    "original" keeps the RMS of an orthogonalised update of a tall matrix like a square
    one's; "match_rms_adamw" gives every matrix the update RMS of AdamW (about 0.2), so
    AdamW's lr and weight decay carry over. Leaves with fewer than 2 dims raise
    ``ValueError``. Declares ``Needs.LEAVES`` (reads each leaf's shape).

    Args:
      learning_rate: :math:`\eta` >= 0, a number or 0-d tensor.
      adjust_lr_fn: None (default, = "original"), "original" or "match_rms_adamw".

    References:
      Jordan et al., *Muon: An optimizer for hidden layers in neural networks*, 2024,
      https://kellerjordan.github.io/posts/muon/. Liu et al., *Muon is Scalable for LLM
      Training*, 2025, arXiv:2502.16982.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_shape_adjusted_lr(0.1, "match_rms_adamw")
      >>> tx.update({"w": torch.ones(4, 25)}, tx.init(None))[0]["w"][0, :3]  # 0.1 * 0.2 * sqrt(25)
      tensor([0.1000, 0.1000, 0.1000])
    """
    check_range("learning_rate", learning_rate, 0.0)
    check_number("learning_rate", learning_rate)
    if adjust_lr_fn not in ADJUST_LR_FNS:
        raise ValueError(f"Adjust learning rate function {adjust_lr_fn} is not supported")

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        sel = select(updates)
        us = sel.updates
        for u in us:
            if u.dim() < 2:
                raise ValueError(f"scale_by_shape_adjusted_lr needs leaves with at least 2 dims, "
                                 f"got shape {tuple(u.shape)}")
        rates: list[Any] = [learning_rate * shape_lr_ratio(u.shape, adjust_lr_fn) for u in us]
        return sel.rebuild(k.mul(us, k.scalars_for(rates, us), donate=donate)), state

    return declare(GradientTransformation(init_empty_state, update_fn), Needs.LEAVES)
