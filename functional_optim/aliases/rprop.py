"""Rprop with torch.optim.Rprop's arguments and numerics."""

from __future__ import annotations

from typing import Any

from ..base import GradientTransformation, ScalarOrSchedule
from ..combine import chain
from ..hyperparams import check_number, check_range, concrete
from ..transforms import scale, scale_by_rprop
from ._common import maximize_part


def _pair(name: str, value: Any) -> tuple[Any, Any]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be a pair, got {value!r}")
    for i, v in enumerate(value):
        check_number(f"{name}[{i}]", v)
    return value[0], value[1]


def rprop(lr: ScalarOrSchedule = 1e-2, etas: tuple[Any, Any] = (0.5, 1.2),
          step_sizes: tuple[Any, Any] = (1e-6, 50), *, maximize: bool = False) -> GradientTransformation:
    """Rprop exactly as ``torch.optim.Rprop`` (same names, order and defaults).

    Per element, with ``s = sign(g * prev)`` (``g = -g`` if maximize): the step size is
    multiplied by ``etas[1]`` where ``s > 0``, by ``etas[0]`` where ``s < 0`` and clamped to
    ``step_sizes``; ``g`` is zeroed where ``s < 0``; ``prev = g``; update
    ``-sign(g) * step_size`` (:func:`scale_by_rprop`, then ``scale(-1)``).

    The learning rate is only the initial step size: a leaf's step sizes start at ``lr``
    (clamped) at its first update, with the lr of that moment (a 0-d tensor changed in
    place or a schedule, called with the number of updates so far), and later changes
    of the lr do not affect them, as in torch. A 0-d tensor lr is differentiable through
    that initial step size.

    Args:
      lr: initial step size >= 0: a number, a 0-d tensor, or a schedule. Default 1e-2.
      etas: ``(etaminus, etaplus)`` with ``0 < etaminus < 1 < etaplus``. Default (0.5, 1.2).
      step_sizes: ``(min, max)`` step size. Default (1e-6, 50).
      maximize: maximize the objective instead of minimizing. Default False.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.rprop(lr=0.1)
      >>> params = {"w": torch.zeros(2)}
      >>> updates, state = opt.update({"w": torch.tensor([2.0, -3.0])}, opt.init(params), params)
      >>> fo.apply_updates(params, updates)["w"]
      tensor([-0.1000,  0.1000])
    """
    check_range("lr", lr, 0.0, schedule_ok=True)
    eta_minus, eta_plus = _pair("etas", etas)
    minus, plus = concrete(eta_minus), concrete(eta_plus)
    if (minus is not None and not 0.0 < minus < 1.0) or (plus is not None and not plus > 1.0):
        raise ValueError(f"Invalid etas: {minus}, {plus} (expected 0 < etas[0] < 1 < etas[1])")
    min_step, max_step = _pair("step_sizes", step_sizes)
    return chain(*maximize_part(maximize), scale_by_rprop(lr, eta_minus, eta_plus, min_step, max_step),
                 scale(-1.0))
