"""``timm.optim.NAdamLegacy`` on the functional engine (``fo.timm.nadam_legacy``)."""

import torch

import functional_optim as fo
from functional_optim.hyperparams import concrete

from ._adabelief import _reject
from ..optimizer import Entry
from ..torch_optim import _TorchCompatible


class NAdamLegacy(_TorchCompatible):
    """``timm.optim.NAdamLegacy`` on the functional engine (``fo.timm.nadam_legacy``), with
    timm's signature and per-param state (``step`` as a Python int, ``m_schedule`` as a
    Python float, ``exp_avg``, ``exp_avg_sq``).

    Args:
      params: an iterable of tensors or of param-group dicts.
      lr: learning rate >= 0. Default 2e-3.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.999).
      eps: >= 0. Default 1e-8.
      weight_decay: L2 penalty >= 0. Default 0.
      schedule_decay: momentum schedule decay >= 0. Default 4e-3.

    A negative lr raises ValueError with timm's message followed by the rule; other
    invalid values raise ValueError naming the argument.

    References:
      Dozat, *Incorporating Nesterov Momentum into Adam*, ICLR 2016 workshop.

    Example:
      >>> import torch
      >>> from adapters.timm import NAdamLegacy
      >>> w = torch.nn.Parameter(torch.zeros(2))
      >>> opt = NAdamLegacy([w])
      >>> w.grad = torch.ones(2)
      >>> opt.step()
      >>> sorted(opt.state_dict()["state"][0])
      ['exp_avg', 'exp_avg_sq', 'm_schedule', 'step']
    """

    _state_keys = {"step": ("ScaleByNadamLegacyState.count",),
                   "m_schedule": ("ScaleByNadamLegacyState.m_schedule",),
                   "exp_avg": ("ScaleByNadamLegacyState.mu",), "exp_avg_sq": ("ScaleByNadamLegacyState.nu",)}
    _int_step = True

    def __init__(
            self,
            params,
            lr=2e-3,
            betas=(0.9, 0.999),
            eps=1e-8,
            weight_decay=0,
            schedule_decay=4e-3,
    ):
        value = concrete(lr)
        _reject(value is not None and not 0.0 <= value, f"Invalid learning rate: {lr}", "lr must be >= 0")
        self._setup(params, fo.timm.nadam_legacy, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, schedule_decay=schedule_decay), False)

    def _export_entry(self, entry: Entry) -> Entry:
        out = super()._export_entry(entry)
        if "m_schedule" in out:  # timm keeps it as a Python float
            out["m_schedule"] = float(out["m_schedule"])
        return out

    def _import_entry(self, entry: Entry) -> Entry:
        out = super()._import_entry(entry)
        name = "ScaleByNadamLegacyState.m_schedule"
        if name in out:
            out[name] = torch.as_tensor(out[name], dtype=torch.float64)
        return out
