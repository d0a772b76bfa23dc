"""``timm.optim.SGDP`` on the functional engine (``fo.timm.sgdp``)."""

import torch
from torch.optim.optimizer import required

import functional_optim as fo

from ..optimizer import Entry
from ..torch_optim import _TorchCompatible


class SGDP(_TorchCompatible):
    """``timm.optim.SGDP`` on the functional engine (``fo.timm.sgdp``), with timm's signature
    (``lr`` required) and per-param state (``momentum``: the momentum buffer).

    Args:
      params: an iterable of tensors or of param-group dicts.
      lr: learning rate >= 0 (required).
      momentum: in [0, 1). Default 0.
      dampening: dampening of the gradient term. Default 0.
      weight_decay: decoupled decay >= 0 (divided by ``1 - momentum``). Default 0.
      nesterov: Nesterov momentum. Default False.
      eps: >= 0. Default 1e-8.
      delta: cosine threshold of the projection >= 0. Default 0.1.
      wd_ratio: decay ratio of projected params >= 0. Default 0.1.
      caution: spherical / standard caution. Default False.

    timm checks nothing; here invalid values raise ValueError naming the argument.

    References:
      Heo et al., *AdamP*, ICLR 2021, arXiv:2006.08217.

    Example:
      >>> import torch
      >>> from adapters.timm import SGDP
      >>> w = torch.nn.Parameter(torch.zeros(2))
      >>> opt = SGDP([w], lr=0.1, momentum=0.9)
      >>> w.grad = torch.tensor([1.0, -1.0])
      >>> opt.step()
      >>> w.detach(), sorted(opt.state_dict()["state"][0])
      (tensor([-0.1000,  0.1000]), ['momentum'])
    """

    def __init__(
            self,
            params,
            lr=required,
            momentum=0,
            dampening=0,
            weight_decay=0,
            nesterov=False,
            eps=1e-8,
            delta=0.1,
            wd_ratio=0.1,
            caution=False,
    ):
        self._setup(params, fo.timm.sgdp, dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
            eps=eps, delta=delta, wd_ratio=wd_ratio, caution=caution), False)

    def _export_entry(self, entry: Entry) -> Entry:
        # timm keeps only the buffer, created at a param's first step
        if "TraceState.trace" not in entry or int(entry["TraceState.count"]) == 0:
            return {}
        return {"momentum": entry["TraceState.trace"]}

    def _import_entry(self, entry: Entry) -> Entry:
        buf = entry.get("momentum")
        if buf is None:
            return {}
        return {"TraceState.trace": buf, "TraceState.count": torch.ones((), dtype=torch.int32)}
