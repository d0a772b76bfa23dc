"""``timm.optim.Adahessian`` on the functional engine (``fo.timm.adahessian``).

No ``from __future__ import annotations`` here: the signature prints exactly as timm's.
"""

import torch

import functional_optim as fo

from ..torch_optim import _TorchCompatible

__all__ = ["Adahessian"]

_COUNT = "ScaleByAdahessianState.count"
_HESS_COUNT = "ScaleByAdahessianState.hess_count"


class _AdahessianFactory:
    """``fo.timm.adahessian`` over a param group's keys (timm's: lr, betas, eps,
    weight_decay, hessian_power), with the optimizer-wide ``update_each``,
    ``n_samples`` and ``avg_conv_kernel`` (timm keeps those on the optimizer, not in the
    groups). A class, not a closure, so the optimizer pickles."""

    def __init__(self, update_each, n_samples, avg_conv_kernel):
        self.update_each, self.n_samples, self.avg_conv_kernel = update_each, n_samples, avg_conv_kernel

    def __call__(self, lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, hessian_power=1.0):
        return fo.timm.adahessian(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                  hessian_power=hessian_power, update_each=self.update_each,
                                  n_samples=self.n_samples, avg_conv_kernel=self.avg_conv_kernel)


class Adahessian(_TorchCompatible):
    """``timm.optim.Adahessian`` on the functional engine (``fo.timm.adahessian``), with
    timm's signature, protocol and per-param state (``hessian step`` from construction,
    then ``step``, ``exp_avg`` and ``exp_hessian_diag_sq``), so checkpoints load both ways.

    The protocol is timm's: call ``loss.backward(create_graph=True)``, then ``step()``.
    ``step`` picks the params whose estimate is due (every ``update_each`` steps, or none
    yet), draws Rademacher vectors :math:`z` for them from ``self.generator``
    (``torch.Generator().manual_seed(2147483647)`` made at construction, as timm), computes
    the Hessian-vector products :math:`Hz` with ``torch.autograd.grad`` and passes
    :math:`\\frac1n \\sum z \\odot Hz` to the functional update as ``hessian``. Same draws,
    same order as timm: the trajectories match.

    Args:
      params: an iterable of tensors or of param-group dicts.
      lr: learning rate >= 0. Default 0.1.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.999).
      eps: added to the power of the second moment. Default 1e-8.
      weight_decay: decoupled (AdamW-style). Default 0.
      hessian_power: in [0, 1]. Default 1.
      update_each: refresh the estimate every this many steps. Default 1.
      n_samples: Rademacher samples per estimate. Default 1.
      avg_conv_kernel: average ``|hess|`` over the kernel of 4-D params. Default False.

    Invalid values raise ValueError with timm's message first. Differences: the estimate
    lives in the optimizer's state, not on the params (timm sets ``p.hess``); like timm's,
    it is not in the state_dict, so after loading a checkpoint the next step takes a new one.

    Example:
      >>> import torch
      >>> from adapters.timm import Adahessian
      >>> w = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
      >>> opt = Adahessian([w], lr=0.1)
      >>> (w ** 4).sum().backward(create_graph=True)
      >>> opt.step()
      >>> sorted(opt.state_dict()["state"][0]), opt.is_second_order
      (['exp_avg', 'exp_hessian_diag_sq', 'hessian step', 'step'], True)
    """

    _state_keys = {"hessian step": (_COUNT,), "step": (_COUNT,), "exp_avg": ("ScaleByAdahessianState.mu",),
                   "exp_hessian_diag_sq": ("ScaleByAdahessianState.nu",)}
    _step_keys = frozenset({"step", "hessian step"})
    _int_step = True  # timm counts steps in Python ints
    _eager_state = True  # timm sets "hessian step" = 0 at construction

    def __init__(
            self,
            params,
            lr=0.1,
            betas=(0.9, 0.999),
            eps=1e-8,
            weight_decay=0.0,
            hessian_power=1.0,
            update_each=1,
            n_samples=1,
            avg_conv_kernel=False,
    ):
        fo.timm.adahessian(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, hessian_power=hessian_power,
                           update_each=update_each, n_samples=n_samples,
                           avg_conv_kernel=avg_conv_kernel)  # timm's checks, before anything is built
        self.n_samples = n_samples
        self.update_each = update_each
        self.avg_conv_kernel = avg_conv_kernel
        # the same z on every process (timm: "deterministically generates the same zs across all GPUs")
        self.seed = 2147483647
        self.generator = torch.Generator().manual_seed(self.seed)
        self._setup(params, _AdahessianFactory(update_each, n_samples, avg_conv_kernel), dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, hessian_power=hessian_power), False)

    @property
    def is_second_order(self):
        return True

    def get_params(self):
        """All params of all groups that require a gradient (timm's ``get_params``)."""
        return (p for group in self.param_groups for p in group["params"] if p.requires_grad)

    def _export_entry(self, entry):
        if _COUNT not in entry:
            return {}
        if int(entry[_COUNT]) == 0:
            return {"hessian step": 0}
        return super()._export_entry(entry)

    @torch.no_grad()
    def step(self, closure=None):
        """One step (after ``loss.backward(create_graph=True)``): Hutchinson estimates for
        the params that are due, then the update of every param with a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        due = []
        for group, rt in zip(self.param_groups, self._groups):
            for p, entry in zip(group["params"], rt.entries(group["params"])):
                if not p.requires_grad or p.grad is None:
                    continue
                if int(entry[_COUNT]) % self.update_each == 0 or int(entry[_HESS_COUNT]) == 0:
                    due.append(p)
        hess = {}
        if due:
            if self.generator.device != due[0].device:  # timm's way of moving the generator
                self.generator = torch.Generator(due[0].device).manual_seed(self.seed)
            grads = [p.grad for p in due]
            for i in range(self.n_samples):
                zs = [torch.randint(0, 2, p.size(), generator=self.generator, device=p.device) * 2.0 - 1.0
                      for p in due]
                h_zs = torch.autograd.grad(grads, due, grad_outputs=zs, only_inputs=True,
                                           retain_graph=i < self.n_samples - 1)
                for h_z, z, p in zip(h_zs, zs, due):
                    term = h_z * z / self.n_samples
                    hess[p] = term if p not in hess else hess[p] + term
        extra = {} if loss is None else {"value": loss}
        for group, rt in zip(self.param_groups, self._groups):
            # params not due get their previous estimate from the state (what is passed is ignored)
            hessian = [None if p.grad is None else hess.get(p, torch.zeros_like(p)) for p in group["params"]]
            rt.step(group, {**extra, "hessian": hessian})
        return loss
