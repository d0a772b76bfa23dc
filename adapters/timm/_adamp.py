"""``timm.optim.AdamP`` on the functional engine (``fo.timm.adamp``)."""

import functional_optim as fo

from ..torch_optim import _TorchCompatible


class AdamP(_TorchCompatible):
    """``timm.optim.AdamP`` on the functional engine (``fo.timm.adamp``), with timm's
    signature and per-param state (``step`` as a Python int, ``exp_avg``, ``exp_avg_sq``).

    Args:
      params: an iterable of tensors or of param-group dicts.
      lr: learning rate >= 0. Default 1e-3.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.999).
      eps: >= 0. Default 1e-8.
      weight_decay: decoupled decay >= 0. Default 0.
      delta: cosine threshold of the projection >= 0. Default 0.1.
      wd_ratio: decay ratio of projected params >= 0. Default 0.1.
      nesterov: Nesterov momentum. Default False.
      caution: spherical / standard caution. Default False.

    timm checks nothing; here invalid values raise ValueError naming the argument. The
    projection needs each param's shape: the group always runs on per-param leaves.

    References:
      Heo et al., *AdamP*, ICLR 2021, arXiv:2006.08217.

    Example:
      >>> import torch
      >>> from adapters.timm import AdamP
      >>> w = torch.nn.Parameter(torch.zeros(2))
      >>> opt = AdamP([w], lr=0.1)
      >>> w.grad = torch.tensor([1.0, -1.0])
      >>> opt.step()
      >>> w.detach(), opt.state_dict()["state"][0]["step"]
      (tensor([-0.1000,  0.1000]), 1)
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
            delta=0.1,
            wd_ratio=0.1,
            nesterov=False,
            caution=False,
    ):
        self._setup(params, fo.timm.adamp, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, delta=delta, wd_ratio=wd_ratio,
            nesterov=nesterov, caution=caution), False)
