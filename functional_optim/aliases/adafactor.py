"""Adafactor with torch.optim's arguments and numerics (``fo.timm.adafactor`` is timm's)."""

from __future__ import annotations

from typing import Any

import torch

from ..base import GradientTransformation
from ..combine import chain
from ..transforms import clip_by_block_rms, scale, scale_by_relative_step_size
from ..transforms.factored_variance import scale_by_factored_variance
from ..transforms.weight_decay import add_decoupled_weight_decay
from ._common import is_zero, maximize_part, number, reject


def _check(lr: Any, beta2_decay: Any, eps: Any, d: Any, weight_decay: Any) -> tuple[Any, Any]:
    # torch.optim.Adafactor's checks and messages, in its order (values shown as numbers:
    # the adapter feeds a group's numbers to the factory as 0-d tensors)
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    v_lr = number("lr", lr)
    reject(v_lr is not None and not 0.0 <= v_lr, f"Learning rate should be >= 0 but is: {v_lr}", "lr must be >= 0")
    v_decay = number("beta2_decay", beta2_decay)
    reject(v_decay is not None and not 0.0 >= v_decay, f"beta2_decay should be <= 0 but is: {v_decay}",
           "beta2_decay must be <= 0")
    if not isinstance(eps, (tuple, list)) or len(eps) != 2:
        raise ValueError(f"eps must be a pair (eps1 or None, eps2), got {eps!r}")
    eps1, eps2 = eps
    v_eps1 = None if eps1 is None else number("eps[0]", eps1)
    reject(v_eps1 is not None and not 0.0 <= v_eps1, f"epsilon1 should be >= 0 but is: {v_eps1}",
           "eps[0] must be >= 0 or None")
    v_eps2 = number("eps[1]", eps2)
    reject(v_eps2 is not None and not 0.0 <= v_eps2, f"epsilon2 should be >= 0 but is: {v_eps2}", "eps[1] must be >= 0")
    v_d = number("d", d)
    reject(v_d is not None and not 1.0 <= v_d, f"Clipping threshold d should be >= 1 but is: {v_d}", "d must be >= 1")
    v_wd = number("weight_decay", weight_decay)
    reject(v_wd is not None and not 0.0 <= v_wd, f"weight_decay should be >= 0 but is: {v_wd}",
           "weight_decay must be >= 0")
    return eps1, eps2


def adafactor(lr: float | torch.Tensor = 1e-2, beta2_decay: float | torch.Tensor = -0.8,
              eps: tuple[Any, Any] = (None, 1e-3), d: float | torch.Tensor = 1.0,
              weight_decay: float | torch.Tensor = 0.0, *, maximize: bool = False) -> GradientTransformation:
    r"""Adafactor exactly as ``torch.optim.Adafactor`` (same names, order and defaults;
    ``foreach`` is the drop-in's business).

    Per param at its step :math:`t`, with :math:`g` its gradient (negated if
    ``maximize``), :math:`(\epsilon_1, \epsilon_2)` = ``eps`` and :math:`\gamma` = ``lr``,
    in the order computed:

    .. math::

        U &= \max(\hat V_t, \epsilon_1^2)^{-1/2} \odot g \quad\text{with } \hat V_t \text{ the
            factored (ndim} \ge 2\text{, last two dims) or full second moment, decay } 1 - t^{c}
            \quad (\texttt{scale\_by\_factored\_variance}) \\
        U &\leftarrow U / \max\big(1, \mathrm{RMS}(U) / d\big) \quad (\texttt{clip\_by\_block\_rms}) \\
        U &\leftarrow \alpha_t U, \quad \alpha_t = \min(\gamma, 1/\sqrt t)
            \cdot \max(\epsilon_2, \mathrm{RMS}(p)) \quad (\texttt{scale\_by\_relative\_step\_size}) \\
        p &\leftarrow p\,(1 - \gamma\lambda) - U \quad (\texttt{scale(-1)},
            \texttt{ add\_decoupled\_weight\_decay})

    with :math:`\mathrm{RMS}(p)` of the param before the step. I.e. ``chain([scale(-1) if
    maximize], scale_by_factored_variance(beta2_decay, eps[0]), clip_by_block_rms(d),
    scale_by_relative_step_size(None, eps[1], max_relative_step=lr), scale(-1),
    [add_decoupled_weight_decay(weight_decay, lr)])``. 0-d and 1-d params keep a full
    variance; params with more dims are factored over their last two (torch's
    ``row_var``/``col_var`` keep size 1 in the reduced dim). ``eps[0]=None`` is the
    machine epsilon of each param's dtype (torch's foreach path; its single-tensor path
    takes the first param's for the whole group). Unlike the paper, ``lr`` caps the
    relative step and scales the weight decay.

    Args:
      lr: :math:`\gamma` >= 0 (a number or 1-element tensor). Default 1e-2.
      beta2_decay: :math:`c` <= 0, the second-moment decay is :math:`1 - t^{c}`. Default -0.8.
      eps: :math:`(\epsilon_1, \epsilon_2)`: :math:`\epsilon_1` >= 0 or None (the dtype's
        machine epsilon) bounds the estimate below; :math:`\epsilon_2` >= 0 is the smallest
        param scale. Default (None, 1e-3).
      d: the clipping threshold >= 1 of the update's RMS. Default 1.
      weight_decay: :math:`\lambda` >= 0, decoupled (scaled by ``lr``). Default 0.
      maximize: maximize the objective instead of minimizing. Default False.

    References:
      Shazeer & Stern, *Adafactor: Adaptive Learning Rates with Sublinear Memory Cost*,
      2018, arXiv:1804.04235.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.adafactor()
      >>> params = {"w": torch.ones(3)}
      >>> u, _ = opt.update({"w": torch.tensor([2.0, -2.0, 2.0])}, opt.init(params), params)
      >>> u["w"]  # at t = 1: -min(lr, 1) * RMS(p) * g / |g|
      tensor([-0.0100,  0.0100, -0.0100])
    """
    eps1, eps2 = _check(lr, beta2_decay, eps, d, weight_decay)
    return chain(
        *maximize_part(maximize),
        scale_by_factored_variance(beta2_decay, eps1),
        clip_by_block_rms(d),
        scale_by_relative_step_size(None, eps2, max_relative_step=lr),
        scale(-1.0),
        *([] if is_zero(weight_decay) else [add_decoupled_weight_decay(weight_decay, lr)]),
    )
