"""``apex.optimizers``' fused optimizers on the functional engine, on any device.

``FusedAdam``, ``FusedLAMB``, ``FusedSGD`` and ``FusedNovoGrad`` with apex's signatures,
update rules (``fo.apex.*``) and state_dict layout, so an apex checkpoint loads here and
back: per-param ``exp_avg``/``exp_avg_sq`` (``momentum_buffer`` for SGD), the step count
in each param group (``group['step']``, a Python int, counted even when no param of the
group has a gradient, as apex does) and, for NovoGrad, the per-param norms as apex's
``group['exp_avg_sq']`` pair ``[fp16 params' norms, other params' norms]``. apex's
instance flags (``adam_w_mode``, ``use_nvlamb``, ``wd_after_momentum``,
``reg_inside_moment``) are group hyperparameters here (filled from the optimizer's own
values when an apex state_dict, which lacks them, is loaded). apex is never imported;
for compiled steps use ``FunctionalOptimizer(params, fo.apex.fused_lamb, compile=True)``.

No ``from __future__ import annotations``: the signatures print as apex's.
"""

from typing import Any, Dict, Optional

import torch
from torch.optim.optimizer import required

import functional_optim as fo
from functional_optim.transforms.apex_fused import ScaleByApexMomentsState, ScaleByApexNovogradState

from .optimizer import Entry
from .group_step import GroupStepped
from .torch_optim import SGD, _TorchCompatible

__all__ = ["FusedAdam", "FusedLAMB", "FusedSGD", "FusedNovoGrad"]

_M = "ScaleByApexMomentsState."
_N = "ScaleByApexNovogradState."


class _GroupStepped(GroupStepped):
    """apex's layout: per-param moments, ``step`` (a Python int) in each param group."""

    _prefix = _M  # the state class whose ``count`` is the group's step

    @property
    def _count_key(self) -> str:
        return self._prefix + "count"
    _state_cls: type = ScaleByApexMomentsState
    _per_param: Dict[str, str] = {"exp_avg": "mu", "exp_avg_sq": "nu"}  # apex key -> our field
    _flags: tuple = ()  # apex's instance flags, kept as group hyperparameters here

    def _export_entry(self, entry: Entry) -> Entry:
        if self._prefix + "leaf_count" not in entry or int(entry[self._prefix + "leaf_count"]) == 0:
            return {}  # apex creates a param's state at its first gradient
        return {key: entry[self._prefix + field] for key, field in self._per_param.items()}

    def _import_entry(self, entry: Entry) -> Entry:
        out = {}
        step = entry.get("step")
        if step is not None:
            out[self._prefix + "count"] = torch.as_tensor(step).to(torch.int32)
        first = next(iter(self._per_param))
        if entry.get(first) is not None:
            out[self._prefix + "leaf_count"] = torch.as_tensor(1 if step is None else step).to(torch.int32)
        for key, field in self._per_param.items():
            if entry.get(key) is not None:
                out[self._prefix + field] = entry[key]
        return out

    def _split_group(self, saved: Dict[str, Any], state: Dict[Any, Any], current: Optional[Dict[str, Any]]) -> None:
        # apex's instance flags are not in its groups: they come from this optimizer
        super()._split_group(saved, state, current)
        if current is not None:
            for flag in self._flags:
                saved.setdefault(flag, current[flag])


class FusedAdam(_GroupStepped):
    """``apex.optimizers.FusedAdam`` on the functional engine (``fo.apex.fused_adam``), with
    apex's signature and state_dict layout, on any device.

    Args:
      params: an iterable of tensors or of param-group dicts.
      lr: learning rate >= 0. Default 1e-3.
      bias_correction: bias-correct the moments. Default True.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.999).
      eps: >= 0. Default 1e-8.
      adam_w_mode: decoupled weight decay (AdamW) rather than L2. Default True.
      weight_decay: >= 0. Default 0.
      amsgrad: not supported: True raises ValueError (apex: RuntimeError). Default False.
      set_grad_none: kept as apex's attribute; ``zero_grad()`` sets grads to None (torch's
        default, which apex's fallback also reaches). Default True.
      capturable: accepted and ignored (CUDA graphs; steps here need no host sync). Default False.
      use_master: fp32 master copies of fp16 params: not supported, True raises ValueError. Default False.

    Example:
      >>> import torch
      >>> from adapters.apex import FusedAdam
      >>> w = torch.nn.Parameter(torch.ones(2))
      >>> opt = FusedAdam([w], lr=0.1, weight_decay=0.5)
      >>> w.grad = torch.tensor([1.0, -1.0])
      >>> opt.step()
      >>> w.detach(), opt.state_dict()["param_groups"][0]["step"]
      (tensor([0.8500, 1.0500]), 1)
    """

    _flags = ("adam_w_mode",)

    def __init__(self, params, lr=1e-3, bias_correction=True,
                 betas=(0.9, 0.999), eps=1e-8, adam_w_mode=True,
                 weight_decay=0., amsgrad=False, set_grad_none=True,
                 capturable=False, use_master=False):
        if use_master:
            raise ValueError("use_master=True (fp32 master copies of fp16 params) is not supported by FusedAdam "
                             "here; keep float32 params or use a bf16-state option")
        fo.apex.fused_adam(lr, bias_correction, betas, eps, adam_w_mode, weight_decay, amsgrad)  # apex's checks
        self.set_grad_none, self.capturable, self.use_master = set_grad_none, capturable, use_master
        self._setup(params, fo.apex.fused_adam, dict(
            lr=lr, bias_correction=bias_correction, betas=betas, eps=eps, adam_w_mode=adam_w_mode,
            weight_decay=weight_decay, amsgrad=amsgrad), False)


class FusedLAMB(_GroupStepped):
    """``apex.optimizers.FusedLAMB`` on the functional engine (``fo.apex.fused_lamb``), with
    apex's signature and state_dict layout, on any device.

    The global gradient norm is computed once per ``step()`` over every group's gradients
    and clipped with ``defaults['max_grad_norm']``, as apex does; ``p.grad`` is left
    unchanged (apex overwrites it with the update).

    Args:
      params: an iterable of tensors or of param-group dicts.
      lr: learning rate >= 0. Default 1e-3.
      bias_correction: bias-correct the moments. Default True.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.999).
      eps: >= 0. Default 1e-6.
      weight_decay: >= 0. Default 0.01.
      amsgrad: not supported: True raises ValueError. Default False.
      adam_w_mode: decoupled weight decay rather than L2. Default True.
      grad_averaging: weight the gradient by ``1 - beta1`` in the first moment. Default True.
      set_grad_none: kept as apex's attribute (see ``FusedAdam``). Default True.
      max_grad_norm: > 0, the global-norm clipping threshold. Default 1.0.
      use_nvlamb: apply the trust ratio also at zero weight decay. Default False.

    Example:
      >>> import torch
      >>> from adapters.apex import FusedLAMB
      >>> w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
      >>> opt = FusedLAMB([w], lr=0.1)
      >>> w.grad = torch.tensor([0.5, -0.5])
      >>> opt.step()
      >>> w.detach()  # trust ratio ||w|| / ||u||: the step has length lr * ||w||
      tensor([2.6342, 4.3409])
    """

    _flags = ("adam_w_mode", "use_nvlamb")

    def __init__(self, params, lr=1e-3, bias_correction=True, betas=(0.9, 0.999), eps=1e-6,
                 weight_decay=0.01, amsgrad=False, adam_w_mode=True, grad_averaging=True,
                 set_grad_none=True, max_grad_norm=1.0, use_nvlamb=False):
        fo.apex.fused_lamb(lr, bias_correction, betas, eps, weight_decay, amsgrad, adam_w_mode, grad_averaging,
                           max_grad_norm, use_nvlamb)  # apex's checks first
        self.set_grad_none = set_grad_none
        self._setup(params, fo.apex.fused_lamb, dict(
            lr=lr, bias_correction=bias_correction, betas=betas, eps=eps, weight_decay=weight_decay,
            amsgrad=amsgrad, adam_w_mode=adam_w_mode, grad_averaging=grad_averaging,
            max_grad_norm=max_grad_norm, use_nvlamb=use_nvlamb), False)

    def _clip_divisor(self) -> Optional[torch.Tensor]:
        """apex's ``G / c if G > c else 1``, ``G`` the norm of every group's gradients."""
        grads = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("FusedLAMB does not support sparse gradients, please consider SparseAdam "
                                       "instead")
                grads.append(p.grad)
        if not grads:
            return None
        global_norm = fo.kernels.global_norm(grads, fo.kernels.norm_dtype(grads))
        return (global_norm / self.defaults["max_grad_norm"]).clamp_(min=1.0)


class FusedSGD(_TorchCompatible):
    """``apex.optimizers.FusedSGD`` on the functional engine (``fo.apex.fused_sgd``), with
    apex's signature and state (``momentum_buffer``, torch's SGD layout), on any device.

    Args:
      params: an iterable of tensors or of param-group dicts.
      lr: learning rate >= 0 (required).
      momentum: >= 0. Default 0.
      dampening: Default 0.
      weight_decay: >= 0. Default 0.
      nesterov: Nesterov momentum (needs momentum > 0, zero dampening). Default False.
      wd_after_momentum: add the weight decay after the momentum. Default False.

    With momentum 0 no buffer is kept (apex allocates an unused zero buffer).

    Example:
      >>> import torch
      >>> from adapters.apex import FusedSGD
      >>> w = torch.nn.Parameter(torch.ones(2))
      >>> opt = FusedSGD([w], lr=0.1, momentum=0.9, weight_decay=0.5, wd_after_momentum=True)
      >>> w.grad = torch.ones(2)
      >>> opt.step()
      >>> w.detach()
      tensor([0.8500, 0.8500])
    """

    _export_entry = SGD._export_entry
    _import_entry = SGD._import_entry

    def __init__(self, params, lr=required, momentum=0, dampening=0,
                 weight_decay=0, nesterov=False,
                 wd_after_momentum=False):
        if lr is required:
            raise TypeError("FusedSGD needs a learning rate: lr is required")
        fo.apex.fused_sgd(lr, momentum, dampening, weight_decay, nesterov, wd_after_momentum)  # apex's checks
        self._setup(params, fo.apex.fused_sgd, dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
            wd_after_momentum=wd_after_momentum), False)


class FusedNovoGrad(_GroupStepped):
    """``apex.optimizers.FusedNovoGrad`` on the functional engine (``fo.apex.fused_novograd``),
    with apex's signature and state_dict layout, on any device.

    Per-param ``exp_avg``; each stepped group holds ``step`` and ``exp_avg_sq``, apex's
    pair ``[norms of the float16 params, norms of the others]`` in group order (each in the
    params' real dtype, at least float32).

    Args:
      params: an iterable of tensors or of param-group dicts.
      lr: learning rate >= 0. Default 1e-3.
      bias_correction: bias-correct both averages. Default True.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.999).
      eps: >= 0. Default 1e-8.
      weight_decay: >= 0. Default 0.
      amsgrad: not supported: True raises ValueError. Default False.
      reg_inside_moment: normalise and decay the gradient before the momentum. Default False.
      grad_averaging: weight the gradient by ``1 - beta1``. Default True.
      norm_type: 2 (L2) or 0 (infinity norm). Default 2.
      init_zero: start the norm average at 0. Default False.
      set_grad_none: kept as apex's attribute (see ``FusedAdam``). Default True.

    Example:
      >>> import torch
      >>> from adapters.apex import FusedNovoGrad
      >>> w = torch.nn.Parameter(torch.zeros(2))
      >>> opt = FusedNovoGrad([w], lr=0.1, bias_correction=False, eps=0.0)
      >>> w.grad = torch.tensor([3.0, 4.0])
      >>> opt.step()
      >>> w.detach(), opt.state_dict()["param_groups"][0]["exp_avg_sq"]
      (tensor([-0.0060, -0.0080]), [tensor([]), tensor([5.])])
    """

    _prefix = _N
    _state_cls = ScaleByApexNovogradState
    _per_param = {"exp_avg": "mu"}
    _flags = ("reg_inside_moment",)

    def __init__(self, params, lr=1e-3, bias_correction=True,
                 betas=(0.9, 0.999), eps=1e-8, weight_decay=0.,
                 amsgrad=False, reg_inside_moment=False,
                 grad_averaging=True, norm_type=2, init_zero=False,
                 set_grad_none=True):
        fo.apex.fused_novograd(lr, bias_correction, betas, eps, weight_decay, amsgrad, reg_inside_moment,
                               grad_averaging, norm_type, init_zero)  # apex's checks first
        self.set_grad_none = set_grad_none
        self._setup(params, fo.apex.fused_novograd, dict(
            lr=lr, bias_correction=bias_correction, betas=betas, eps=eps, weight_decay=weight_decay,
            amsgrad=amsgrad, reg_inside_moment=reg_inside_moment, grad_averaging=grad_averaging,
            norm_type=norm_type, init_zero=init_zero), False)

    def state_dict(self) -> Dict[str, Any]:
        """apex's format: per-param ``exp_avg``; ``step`` and ``exp_avg_sq`` in each stepped group."""
        out = super().state_dict()
        for packed, group, rt in zip(out["param_groups"], self.param_groups, self._groups):
            if "step" not in packed:
                continue
            halves, others = [], []
            for p, entry in zip(group["params"], rt.entries(group["params"])):
                if int(entry.get(_N + "leaf_count", 0)):
                    (halves if p.dtype == torch.float16 else others).append(entry[_N + "nu"].reshape(()))
            packed["exp_avg_sq"] = [torch.stack(halves) if halves else torch.zeros(0),
                                    torch.stack(others) if others else torch.zeros(0)]
        return out

    def _split_group(self, saved: Dict[str, Any], state: Dict[Any, Any], current: Optional[Dict[str, Any]]) -> None:
        norms = saved.pop("exp_avg_sq", None)
        super()._split_group(saved, state, current)
        if norms is None or current is None:
            return
        params = current["params"]
        slots = [iter(list(norms[0])), iter(list(norms[1]))]
        for pos, idx in enumerate(saved["params"]):
            key = str(idx) if idx not in state and str(idx) in state else idx
            if key not in state or state[key].get("exp_avg") is None:
                continue
            half = pos < len(params) and params[pos].dtype == torch.float16
            state[key] = {**state[key], "norm": next(slots[0 if half else 1])}

    def _import_entry(self, entry: Entry) -> Entry:
        out = super()._import_entry(entry)
        if entry.get("norm") is not None:
            out[_N + "nu"] = entry["norm"]
        return out
