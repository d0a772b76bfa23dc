"""Muon with torch.optim's arguments and numerics."""

from __future__ import annotations

from typing import Any

import optree
import torch

from ..base import GradientTransformation, needs, declare
from ..combine import chain
from ..transforms import ema, scale
from ..transforms.newton_schulz import NS_COEFFICIENTS, orthogonalize_newton_schulz
from ..transforms.shape_scaling import ADJUST_LR_FNS, scale_by_shape_adjusted_lr
from ..transforms.weight_decay import add_decoupled_weight_decay
from ._common import is_zero, number, reject


def _check(lr: Any, weight_decay: Any, momentum: Any, nesterov: Any, adjust_lr_fn: Any) -> None:
    # torch.optim.Muon's checks and messages, in its order (values shown as numbers:
    # the adapter feeds a group's numbers to the factory as 0-d tensors)
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    v_lr = number("lr", lr)
    reject(v_lr is not None and not 0.0 <= v_lr, f"Learning rate should be >= 0 but is: {v_lr}", "lr must be >= 0")
    v_mom = number("momentum", momentum)
    reject(v_mom is not None and not 0.0 <= v_mom, f"momentum should be >= 0 but is: {v_mom}",
           "momentum must be >= 0")
    v_wd = number("weight_decay", weight_decay)
    reject(v_wd is not None and not 0.0 <= v_wd, f"weight decay should be >= 0 but is: {v_wd}",
           "weight_decay must be >= 0")
    if adjust_lr_fn not in ADJUST_LR_FNS:
        raise ValueError(f"Adjust learning rate function {adjust_lr_fn} is not supported")
    if not isinstance(nesterov, bool):
        raise TypeError(f"nesterov must be a bool, got {type(nesterov).__name__}")


def _only_matrices(tx: GradientTransformation) -> GradientTransformation:
    """``tx`` whose ``init`` refuses params that are not 2-D, with torch's message."""

    def init_fn(params):
        for p in optree.tree_leaves(params, none_is_leaf=True):
            if p is not None and p.ndim != 2:
                raise ValueError(f"Muon only supports 2D parameters whereas we found a parameter with size: "
                                 f"{p.size()}")
        return tx.init(params)

    return declare(GradientTransformation(init_fn, tx.update), needs(tx))


def muon(lr: float | torch.Tensor = 1e-3, weight_decay: float | torch.Tensor = 0.1,
         momentum: float | torch.Tensor = 0.95, nesterov: bool = True,
         ns_coefficients: tuple[Any, Any, Any] = NS_COEFFICIENTS, eps: float | torch.Tensor = 1e-7,
         ns_steps: int = 5, adjust_lr_fn: str | None = None, *,
         ns_dtype: torch.dtype | None = torch.bfloat16) -> GradientTransformation:
    r"""Muon exactly as ``torch.optim.Muon`` (same names, order and defaults), for 2-D params.

    Per matrix param :math:`p` of shape :math:`(A, B)`, with :math:`g` its gradient,
    :math:`\mu` = ``momentum``, :math:`\gamma` = ``lr``, in the order computed:

    .. math::

        B_t &= \mathrm{lerp}(B_{t-1}, g, 1 - \mu), \qquad
            \tilde B_t = \mathrm{lerp}(g, B_t, \mu) \text{ if nesterov else } B_t
            \quad (\texttt{ema}) \\
        O_t &= \mathrm{NS}^{(a,b,c)}_k(\tilde B_t; \epsilon) \text{ in bfloat16}
            \quad (\texttt{orthogonalize\_newton\_schulz}) \\
        p &\leftarrow p\,(1 - \gamma\lambda) - \gamma\, s(A, B)\, O_t
            \quad (\texttt{scale\_by\_shape\_adjusted\_lr}, \texttt{ scale(-1)},
            \texttt{ add\_decoupled\_weight\_decay})

    with :math:`s = \sqrt{\max(1, A/B)}` (``adjust_lr_fn`` None or "original") or
    :math:`0.2\sqrt{\max(A, B)}` ("match_rms_adamw"). The momentum buffer is an
    exponential average (torch's code; its docstring's :math:`\mu B + g` is not what it
    computes). Biases, embeddings and other non-matrix params belong to another
    optimizer (e.g. ``fo.partition`` with ``fo.adamw``): ``init`` refuses them with
    torch's ``ValueError``.

    Args:
      lr: :math:`\gamma` >= 0 (a number or 1-element tensor). Default 1e-3.
      weight_decay: :math:`\lambda` >= 0, decoupled (scaled by ``lr``). Default 0.1.
      momentum: :math:`\mu` in [0, 1]. Default 0.95.
      nesterov: Nesterov's look-ahead of the average. Default True.
      ns_coefficients: :math:`(a, b, c)` of the quintic iteration. Default
        ``(3.4445, -4.7750, 2.0315)``.
      eps: :math:`\epsilon` >= 0, floor of the norm the iteration starts by dividing by.
        Default 1e-7.
      ns_steps: :math:`k`, Newton–Schulz steps, an int in [0, 100). Default 5.
      adjust_lr_fn: None, "original" or "match_rms_adamw" (see above). Default None.
      ns_dtype: the dtype of the iteration (keyword-only, not torch's): bfloat16 (default,
        torch's, bit for bit) or None for the param's own dtype (float64 makes the step
        smooth enough to check derivatives by finite differences).

    References:
      Jordan et al., *Muon: An optimizer for hidden layers in neural networks*, 2024,
      https://kellerjordan.github.io/posts/muon/. Liu et al., *Muon is Scalable for LLM
      Training*, 2025, arXiv:2502.16982 (``match_rms_adamw``).

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.muon(lr=0.1, weight_decay=0.0, ns_dtype=None)
      >>> params = {"w": torch.zeros(2, 2, dtype=torch.float64)}
      >>> g = {"w": torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)}
      >>> u, _ = opt.update(g, opt.init(params), params)
      >>> u["w"].diagonal()  # -lr * O: g's singular values 2 and 1 both mapped near 1
      tensor([-0.0689, -0.1114], dtype=torch.float64)
    """
    _check(lr, weight_decay, momentum, nesterov, adjust_lr_fn)
    return _only_matrices(chain(
        ema(momentum, debias=False, nesterov=nesterov),
        orthogonalize_newton_schulz(ns_coefficients, ns_steps, eps, dtype=ns_dtype),
        scale_by_shape_adjusted_lr(lr, adjust_lr_fn),
        scale(-1.0),
        *([] if is_zero(weight_decay) else [add_decoupled_weight_decay(weight_decay, lr)]),
    ))
