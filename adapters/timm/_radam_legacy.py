"""``timm.optim.RAdamLegacy`` on the functional engine (``fo.timm.radam_legacy``)."""

import functional_optim as fo

from ..torch_optim import _TorchCompatible


class RAdamLegacy(_TorchCompatible):
    """``timm.optim.RAdamLegacy`` on the functional engine (``fo.timm.radam_legacy``), with
    timm's signature and per-param state (``step`` as a Python int, ``exp_avg``,
    ``exp_avg_sq``).

    Args:
      params: an iterable of tensors or of param-group dicts.
      lr: learning rate >= 0. Default 1e-3.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.999).
      eps: >= 0. Default 1e-8.
      weight_decay: decoupled decay >= 0. Default 0.

    Differences from timm: timm computes in float32 whatever the param dtype (its state
    is float32, float64 params are rounded to float32 every step); here the update and
    the moments are in the param dtype (a timm checkpoint's float32 moments load into
    float64 ones). timm checks nothing; here invalid values raise ValueError naming the
    argument.

    References:
      Liu et al., *On the Variance of the Adaptive Learning Rate and Beyond*, ICLR 2020,
      arXiv:1908.03265.

    Example:
      >>> import torch
      >>> from adapters.timm import RAdamLegacy
      >>> w = torch.nn.Parameter(torch.zeros(2))
      >>> opt = RAdamLegacy([w], lr=0.1)
      >>> w.grad = torch.tensor([3.0, -3.0])
      >>> opt.step()
      >>> w.detach()
      tensor([-0.3000,  0.3000])
    """

    _state_keys = {"step": ("ScaleByAdamState.count",), "exp_avg": ("ScaleByAdamState.mu",),
                   "exp_avg_sq": ("ScaleByAdamState.nu",)}
    _int_step = True

    def __init__(
            self,
            params,
            lr=1e-3,
            betas=(0.9, 0.999),
            eps=1e-8,
            weight_decay=0,
    ):
        self._setup(params, fo.timm.radam_legacy, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay),
                    False)
