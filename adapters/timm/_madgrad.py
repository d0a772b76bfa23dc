"""``timm.optim.MADGRAD`` on the functional engine (``fo.timm.madgrad``).

No ``from __future__ import annotations`` here: the signature prints exactly as timm's.
"""

from typing import Any

import functional_optim as fo

from ..torch_optim import _TorchCompatible

__all__ = ["MADGRAD"]


class MADGRAD(_TorchCompatible):
    """``timm.optim.MADGRAD`` on the functional engine (``fo.timm.madgrad``), with timm's
    signature, checks, update and per-param state (``step`` as a Python int,
    ``grad_sum_sq``, ``s`` and, with momentum, ``x0``), so checkpoints load both ways.

    Args:
      params: an iterable of tensors or of param-group dicts.
      lr: learning rate > 0. Default 1e-2.
      momentum: in [0, 1). Default 0.9.
      weight_decay: >= 0, an L2 penalty added to the gradient (or, with
        ``decoupled_decay``, ``p *= 1 - lr * weight_decay``). Default 0.
      eps: >= 0, added to the learning rate and to the cube root. Default 1e-6.
      decoupled_decay: AdamW-style decay. Default False.

    Invalid values raise ValueError with timm's message followed by the rule naming the
    argument. Like timm, ``x0`` is the param as it is at its first step. Sparse gradients
    are not supported (timm's sparse path is not reproduced). For compiled steps use
    ``FunctionalOptimizer(params, fo.timm.madgrad, compile=True, ...)`` (same state names).

    Example:
      >>> import torch
      >>> from adapters.timm import MADGRAD
      >>> w = torch.nn.Parameter(torch.zeros(2))
      >>> opt = MADGRAD([w], lr=1.0, momentum=0.0)
      >>> w.grad = torch.tensor([1.0, 8.0])
      >>> opt.step()
      >>> w.detach(), sorted(opt.state_dict()["state"][0])
      (tensor([-1.0000, -2.0000]), ['grad_sum_sq', 's', 'step'])
    """

    _state_keys = {"step": ("ScaleByMadgradState.count",), "grad_sum_sq": ("ScaleByMadgradState.grad_sum_sq",),
                   "s": ("ScaleByMadgradState.s",), "x0": ("ScaleByMadgradState.x0",)}
    _int_step = True  # timm counts steps in a Python int

    def __init__(
            self,
            params: Any,
            lr: float = 1e-2,
            momentum: float = 0.9,
            weight_decay: float = 0,
            eps: float = 1e-6,
            decoupled_decay: bool = False,
    ):
        fo.timm.madgrad(lr=lr, momentum=momentum, weight_decay=weight_decay, eps=eps,
                        decoupled_decay=decoupled_decay)  # timm's checks, before anything is built
        self._setup(params, fo.timm.madgrad, dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, eps=eps, decoupled_decay=decoupled_decay), False)
