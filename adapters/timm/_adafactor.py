"""``timm.optim.Adafactor`` on the functional engine (``fo.timm.adafactor``).

No ``from __future__ import annotations`` here: the signature prints exactly as timm's.
"""

import math
from typing import Optional, Tuple

import torch
from torch.optim.optimizer import ParamsT

import functional_optim as fo

from ..torch_optim import _TorchCompatible

__all__ = ["Adafactor"]


def _adafactor_group(lr=None, eps=1e-30, eps_scale=1e-3, clip_threshold=1.0, decay_rate=-0.8, beta1=None,
                     weight_decay=0.0, scale_parameter=True, relative_step=True, warmup_init=False,
                     min_dim_size_to_factor=16, caution=False):
    """``fo.timm.adafactor`` from a param group in timm's keys (``beta1``, ``relative_step``):
    with ``relative_step`` the group's ``lr`` (which timm overwrites with the last step
    size) is not an input."""
    return fo.timm.adafactor(lr=None if relative_step else lr, eps=eps, eps_scale=eps_scale,
                             clip_threshold=clip_threshold, decay_rate=decay_rate,
                             betas=None if beta1 is None else (beta1, 0.999), weight_decay=weight_decay,
                             scale_parameter=scale_parameter, warmup_init=warmup_init,
                             min_dim_size_to_factor=min_dim_size_to_factor, caution=caution)


_COUNTS = ("ScaleByFactoredRmsState.count", "ScaleByRelativeStepSizeState.count", "EmaState.count",
           "AddRelativeStepDecayedWeightsState.count")


class Adafactor(_TorchCompatible):
    """``timm.optim.Adafactor`` on the functional engine (``fo.timm.adafactor``), with timm's
    signature, param-group keys (``beta1``, ``relative_step``, ...) and per-param state
    (``step`` as a Python int, ``exp_avg`` with betas, ``exp_avg_sq_row``/``exp_avg_sq_col``
    for factored params or ``exp_avg_sq``, and ``RMS``), so checkpoints load both ways.

    Args:
      params: an iterable of tensors or of param-group dicts.
      lr: external learning rate, or None (default) for the relative step size.
      eps: added to the squared gradient. Default 1e-30.
      eps_scale: smallest param scale of the relative step. Default 1e-3.
      clip_threshold: largest RMS of the update. Default 1.
      decay_rate: the second moment's decay is ``1 - t**decay_rate``. Default -0.8.
      betas: ``(beta1, beta2)`` for a first moment (only beta1 is used), or None (default).
      weight_decay: scaled by the step size. Default 0.
      scale_parameter: relative step scaled by the param's RMS. Default True.
      warmup_init: relative step warmed up linearly (needs ``lr=None``). Default False.
      min_dim_size_to_factor: params whose two factored dims exceed it are factored. Default 16.
      caution: mask the momentum where it disagrees with the gradient. Default False.

    As timm, in relative-step mode each step writes the last param's step size into
    ``group['lr']``. Invalid values raise ValueError (timm's message first where timm has
    one). Differences: float16/bfloat16 params are updated in their own dtype (timm
    computes in float32 and copies back); sparse gradients are not supported.

    Example:
      >>> import torch
      >>> from adapters.timm import Adafactor
      >>> w = torch.nn.Parameter(torch.ones(3))
      >>> opt = Adafactor([w], lr=0.1, eps=0.0)
      >>> w.grad = torch.tensor([2.0, -2.0, 2.0])
      >>> opt.step()
      >>> w.detach(), sorted(opt.state_dict()["state"][0])
      (tensor([0.9000, 1.1000, 0.9000]), ['RMS', 'exp_avg_sq', 'step'])
    """

    _state_keys = {"step": _COUNTS, "exp_avg": ("EmaState.ema",),
                   "exp_avg_sq_row": ("ScaleByFactoredRmsState.v_row",),
                   "exp_avg_sq_col": ("ScaleByFactoredRmsState.v_col",),
                   "exp_avg_sq": ("ScaleByFactoredRmsState.v",),
                   "RMS": ("ScaleByRelativeStepSizeState.rms",)}
    _int_step = True  # timm counts steps in a Python int

    def __init__(
            self,
            params: ParamsT,
            lr: Optional[float] = None,
            eps: float = 1e-30,
            eps_scale: float = 1e-3,
            clip_threshold: float = 1.0,
            decay_rate: float = -0.8,
            betas: Optional[Tuple[float, float]] = None,
            weight_decay: float = 0.0,
            scale_parameter: bool = True,
            warmup_init: bool = False,
            min_dim_size_to_factor: int = 16,
            caution: bool = False,
    ):
        fo.timm.adafactor(lr=lr, eps=eps, eps_scale=eps_scale, clip_threshold=clip_threshold,
                          decay_rate=decay_rate, betas=betas, weight_decay=weight_decay,
                          scale_parameter=scale_parameter, warmup_init=warmup_init,
                          min_dim_size_to_factor=min_dim_size_to_factor, caution=caution)  # timm's checks
        beta1 = None if betas is None else betas[0]
        self._setup(params, _adafactor_group, dict(
            lr=lr, eps=eps, eps_scale=eps_scale, clip_threshold=clip_threshold, decay_rate=decay_rate,
            beta1=beta1, weight_decay=weight_decay, scale_parameter=scale_parameter,
            relative_step=lr is None, warmup_init=warmup_init, min_dim_size_to_factor=min_dim_size_to_factor,
            caution=caution), False)

    def _export_entry(self, entry):
        out = super()._export_entry(entry)
        if "RMS" in out:  # timm's key order: step, moments, RMS
            out["RMS"] = out.pop("RMS")
        return out

    @torch.no_grad()
    def step(self, closure=None):
        """One step; in relative-step mode ``group['lr']`` then holds the last param's step
        size, as timm writes it (a 0-d tensor when the param's RMS sets the scale)."""
        loss = super().step(closure)
        for group, rt in zip(self.param_groups, self._groups):
            if not group["relative_step"]:
                continue
            stepped = [e for p, e in zip(group["params"], rt.entries(group["params"])) if p.grad is not None]
            if not stepped:
                continue
            entry = stepped[-1]
            t = int(entry[_COUNTS[0]])
            lr_t = min(1e-6 * t if group["warmup_init"] else 1e-2, 1.0 / math.sqrt(t))
            scale = max(group["eps_scale"], entry["ScaleByRelativeStepSizeState.rms"].clone()) \
                if group["scale_parameter"] else 1.0
            group["lr"] = lr_t * scale
        return loss
