"""``timm.optim.NvNovoGrad`` on the functional engine (``fo.timm.nvnovograd``).

No ``from __future__ import annotations`` here: the signature prints exactly as timm's.
"""

import functional_optim as fo
from functional_optim.hyperparams import concrete

from ..monai import Novograd
from ..torch_optim import _TorchCompatible
from ._lamb import max_lr_snapshot, reject_below

__all__ = ["NvNovoGrad"]


class NvNovoGrad(_TorchCompatible):
    """``timm.optim.NvNovoGrad`` on the functional engine (``fo.timm.nvnovograd``), with
    timm's signature, checks, update and per-param state (``step`` as a Python int,
    ``exp_avg``, the 0-d ``exp_avg_sq`` and, with amsgrad, ``max_exp_avg_sq``), so
    checkpoints load both ways; each group also holds timm's ``max_lr_snapshot``.

    Args:
      params: an iterable of tensors or of param-group dicts.
      lr: learning rate >= 0. Default 1e-3.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.95, 0.98).
      eps: added to the root of the per-param second moment, >= 0. Default 1e-8.
      weight_decay: >= 0 (timm does not check it; we do). Default 0.
      grad_averaging: scale the momentum's input by ``1 - beta1``. Default False.
      amsgrad: normalise by the running maximum of the second moment. Default False.
      decoupled_decay: decay the weights directly (``p *= 1 - lr * wd``). Default False.
      corrected_weight_decay: decoupled decay scaled by ``lr**2 / max_lr``. Default False.

    Invalid values raise ValueError with timm's message followed by the rule and the
    argument's name. The per-param second moment has the param's dtype, at least float32
    (timm keeps it in torch's default dtype: float32 unless changed), so float64 params
    keep float64 precision there. For compiled steps use
    ``FunctionalOptimizer(params, fo.timm.nvnovograd, compile=True, ...)`` (same state names).

    Example:
      >>> import torch
      >>> from adapters.timm import NvNovoGrad
      >>> w = torch.nn.Parameter(torch.zeros(2))
      >>> opt = NvNovoGrad([w], lr=0.1)
      >>> w.grad = torch.tensor([3.0, 4.0])
      >>> opt.step()
      >>> w.detach(), opt.state_dict()["state"][0]["step"]
      (tensor([-0.0600, -0.0800]), 1)
    """

    _state_keys = Novograd._state_keys  # MONAI's Novograd keeps the same state under the same names
    _int_step = True  # timm counts steps in a Python int

    def __init__(
            self,
            params,
            lr=1e-3,
            betas=(0.95, 0.98),
            eps=1e-8,
            weight_decay=0,
            grad_averaging=False,
            amsgrad=False,
            decoupled_decay=False,
            corrected_weight_decay=False,
    ):
        reject_below(lr, 0.0, f"Invalid learning rate: {lr}", "lr must be >= 0")
        reject_below(eps, 0.0, f"Invalid epsilon value: {eps}", "eps must be >= 0")
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        for i, beta in enumerate(betas):
            b = concrete(beta)
            if b is not None and not 0.0 <= b < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {beta} (betas[{i}] must be in [0, 1))")
        snapshot = max_lr_snapshot(lr, corrected_weight_decay)
        reject_below(weight_decay, 0.0, f"Invalid weight_decay value: {weight_decay}", "weight_decay must be >= 0")
        self._setup(params, fo.timm.nvnovograd, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, grad_averaging=grad_averaging,
            amsgrad=amsgrad, decoupled_decay=decoupled_decay, corrected_weight_decay=corrected_weight_decay,
            max_lr_snapshot=snapshot), False)
