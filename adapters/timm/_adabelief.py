"""``timm.optim.AdaBelief`` on the functional engine (``fo.timm.adabelief``)."""

from typing import Optional

import functional_optim as fo
from functional_optim.hyperparams import concrete
from functional_optim.aliases._common import reject as _reject

from ..torch_optim import _TorchCompatible


def _check_adam_like(lr, eps, betas) -> None:
    """timm's checks of lr, eps and betas (AdaBelief, AdamWLegacy), with timm's messages."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    v = {n: concrete(x) for n, x in (("lr", lr), ("eps", eps), ("b0", betas[0]), ("b1", betas[1]))}
    v = {n: 0.0 if x is None else x for n, x in v.items()}
    _reject(not 0.0 <= v["lr"], f"Invalid learning rate: {lr}", "lr must be >= 0")
    _reject(not 0.0 <= v["eps"], f"Invalid epsilon value: {eps}", "eps must be >= 0")
    for i in (0, 1):
        _reject(not 0.0 <= v[f"b{i}"] < 1.0, f"Invalid beta parameter at index {i}: {betas[i]}",
                f"betas[{i}] must be in [0, 1)")


class AdaBelief(_TorchCompatible):
    """``timm.optim.AdaBelief`` on the functional engine (``fo.timm.adabelief``), with timm's
    signature, checks and per-param state (``step`` as a Python int, ``exp_avg``,
    ``exp_avg_var``, and ``max_exp_avg_var`` with amsgrad; float32 for bf16/fp16 params).

    Args:
      params: an iterable of tensors or of param-group dicts.
      lr: learning rate >= 0. Default 1e-3.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.999).
      eps: >= 0, added to the belief each step and to the denominator. Default 1e-16.
      weight_decay: >= 0. Default 0.
      amsgrad: AMSGrad on the belief. Default False.
      decoupled_decay: AdamW-style decay. Default True.
      fixed_decay: decoupled decay without the lr. Default False.
      rectify: RAdam's rectification. Default True.
      degenerated_to_sgd: SGD steps while the rectification is undefined. Default True.
      foreach: accepted and ignored (the engine chooses).

    Invalid lr, eps or betas raise ValueError with timm's message followed by the rule
    naming the argument. ``p.grad`` is never modified. For compiled steps use
    ``FunctionalOptimizer(params, fo.timm.adabelief, compile=True, ...)`` (same state names).

    References:
      Zhuang et al., *AdaBelief Optimizer*, NeurIPS 2020, arXiv:2010.07468.

    Example:
      >>> import torch
      >>> from adapters.timm import AdaBelief
      >>> w = torch.nn.Parameter(torch.zeros(2))
      >>> opt = AdaBelief([w], lr=0.1)
      >>> w.grad = torch.tensor([1.0, -1.0])
      >>> opt.step()
      >>> w.detach(), sorted(opt.state_dict()["state"][0])
      (tensor([-0.1000,  0.1000]), ['exp_avg', 'exp_avg_var', 'step'])
    """

    _state_keys = {"step": ("ScaleByBeliefState.count",), "exp_avg": ("ScaleByBeliefState.mu",),
                   "exp_avg_var": ("ScaleByBeliefState.nu",), "max_exp_avg_var": ("ScaleByBeliefState.nu_max",)}
    _int_step = True  # timm counts AdaBelief's steps in a Python int

    def __init__(
            self,
            params,
            lr=1e-3,
            betas=(0.9, 0.999),
            eps=1e-16,
            weight_decay=0,
            amsgrad=False,
            decoupled_decay=True,
            fixed_decay=False,
            rectify=True,
            degenerated_to_sgd=True,
            foreach: Optional[bool] = None,
    ):
        _check_adam_like(lr, eps, betas)
        self._setup(params, fo.timm.adabelief, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
            decoupled_decay=decoupled_decay, fixed_decay=fixed_decay, rectify=rectify,
            degenerated_to_sgd=degenerated_to_sgd, foreach=foreach), False)
