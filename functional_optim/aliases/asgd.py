"""Averaged SGD with torch.optim.ASGD's arguments and numerics."""

from __future__ import annotations

import torch

from ..base import GradientTransformation, ScalarOrSchedule
from ..combine import chain
from ..hyperparams import check_number, check_range
from ..transforms import add_decayed_weights, scale_by_asgd
from ._common import is_zero, maximize_part


def asgd(lr: ScalarOrSchedule = 1e-2, lambd: float | torch.Tensor = 1e-4, alpha: float | torch.Tensor = 0.75,
         t0: float | torch.Tensor = 1e6, weight_decay: ScalarOrSchedule = 0, *,
         maximize: bool = False) -> GradientTransformation:
    """ASGD exactly as ``torch.optim.ASGD`` (same names, order and defaults).

    Per leaf, with ``t`` its own update count: ``g = -g`` if maximize;
    ``g += weight_decay * p``; ``p = p * (1 - lambd * eta) - eta * g`` with ``eta`` from the
    previous update (``lr`` at first); ``ax = p`` while ``mu == 1``, else
    ``ax += mu * (p - ax)``; then ``eta = lr / (1 + lambd * lr * t)**alpha`` and
    ``mu = 1 / max(1, t - t0)``, both rounded to torch's float32 scalars
    (:func:`scale_by_asgd`). The averaged params are ``fo.tree.get(state, "ax")``
    (torch's ``state['ax']``); the params themselves are never replaced by them.

    How the learning rate acts: it enters ``eta``, so a change (a 0-d tensor changed in
    place, or a schedule, called with the number of updates so far) takes effect one
    update later, except on a leaf's first update, which uses the current value: exactly
    as changing ``group['lr']`` of torch's ASGD. A 0-d tensor lr is differentiable.

    Args:
      lr: learning rate >= 0: a number, a 0-d tensor, or a schedule ``count -> lr``. Default 1e-2.
      lambd: decay term. Default 1e-4.
      alpha: power for the ``eta`` update. Default 0.75.
      t0: the update after which averaging starts. Default 1e6.
      weight_decay: L2 penalty >= 0 (number, 0-d tensor or schedule). Default 0.
      maximize: maximize the objective instead of minimizing. Default False.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.asgd(lr=0.1, lambd=0.0)
      >>> params = {"w": torch.ones(2)}
      >>> updates, state = opt.update({"w": torch.ones(2)}, opt.init(params), params)
      >>> fo.apply_updates(params, updates)["w"], fo.tree.get(state, "ax")["w"]
      (tensor([0.9000, 0.9000]), tensor([0.9000, 0.9000]))
    """
    check_range("lr", lr, 0.0, schedule_ok=True)
    check_number("lambd", lambd)
    check_number("alpha", alpha)
    check_number("t0", t0)
    check_range("weight_decay", weight_decay, 0.0, schedule_ok=True)
    parts = maximize_part(maximize)
    if not is_zero(weight_decay):
        parts.append(add_decayed_weights(weight_decay))
    parts.append(scale_by_asgd(lr, lambd, alpha, t0))
    return chain(*parts)
