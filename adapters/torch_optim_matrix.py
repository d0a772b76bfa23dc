"""Drop-ins for torch.optim's optimizers with per-matrix math, ``Adafactor`` and ``Muon``:
torch's signatures (plus ``compile``), trajectories and state_dict keys, so checkpoints
load both ways (see ``adapters.torch_optim`` for the shared machinery)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

import functional_optim as fo
from functional_optim.transforms.newton_schulz import NS_COEFFICIENTS

from .optimizer import Entry
from .torch_optim import _TorchCompatible


class Adafactor(_TorchCompatible):
    """``torch.optim.Adafactor`` on the functional engine (``fo.adafactor``), with torch's
    signature and state keys (``step``, ``row_var`` and ``col_var`` for params with 2 or
    more dims, ``variance`` for the others).

    Example:
      >>> import torch
      >>> from adapters import Adafactor
      >>> w = torch.nn.Parameter(torch.ones(2, 3))
      >>> opt = Adafactor([w])
      >>> w.grad = torch.ones(2, 3)
      >>> opt.step()
      >>> {k: tuple(v.shape) for k, v in opt.state_dict()["state"][0].items()}
      {'step': (), 'row_var': (2, 1), 'col_var': (1, 3)}
    """

    _state_keys = {"step": ("ScaleByFactoredVarianceState.count", "ScaleByRelativeStepSizeState.count"),
                   "row_var": ("ScaleByFactoredVarianceState.v_row",),
                   "col_var": ("ScaleByFactoredVarianceState.v_col",),
                   "variance": ("ScaleByFactoredVarianceState.v",)}

    def __init__(self, params: Iterable[Any], lr: float | torch.Tensor = 1e-2, beta2_decay: float = -0.8,
                 eps: tuple[float | None, float] = (None, 1e-3), d: float = 1.0, weight_decay: float = 0.0, *,
                 foreach: bool | None = None, maximize: bool = False, compile: bool = False):
        self._setup(params, fo.adafactor, dict(
            lr=lr, beta2_decay=beta2_decay, eps=eps, d=d, weight_decay=weight_decay, foreach=foreach,
            maximize=maximize), compile)


def _torch_muon(lr: float | torch.Tensor = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                nesterov: bool = True, ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                eps: float = 1e-7, ns_steps: int = 5, adjust_lr_fn: str | None = None) -> fo.GradientTransformation:
    """``fo.muon`` with torch.optim.Muon's hyperparameters only (so a group holds torch's
    keys and nothing else: its state_dicts load into torch and back)."""
    return fo.muon(lr, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps, adjust_lr_fn)


class Muon(_TorchCompatible):
    """``torch.optim.Muon`` on the functional engine (``fo.muon``), with torch's signature and
    state key (``momentum_buffer``). Only 2-D params (torch's ``ValueError`` otherwise).

    Eager steps run torch's for-loop in place (``adapters.eager_steps``), so its bfloat16
    iteration is torch's bit for bit; compiled steps (``compile=True``) are inductor's
    rounding, as ``torch.compile`` of torch's own step is.

    Example:
      >>> import torch
      >>> from adapters import Muon
      >>> w = torch.nn.Parameter(torch.zeros(3, 2))
      >>> opt = Muon([w], lr=0.02)
      >>> w.grad = torch.ones(3, 2)
      >>> opt.step()
      >>> list(opt.state_dict()["state"][0])
      ['momentum_buffer']
    """

    _fused_family = "muon"  # eager steps: torch's for-loop in place (adapters.eager_steps)

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                 eps: float = 1e-7, ns_steps: int = 5, adjust_lr_fn: str | None = None, *,
                 compile: bool = False):
        self._setup(params, _torch_muon, dict(
            lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
            ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn), compile)

    def _export_entry(self, entry: Entry) -> Entry:
        # torch creates the buffer at a param's first step
        if "EmaState.ema" not in entry or int(entry["EmaState.count"]) == 0:
            return {}
        return {"momentum_buffer": entry["EmaState.ema"]}

    def _import_entry(self, entry: Entry) -> Entry:
        buf = entry.get("momentum_buffer")
        if buf is None:
            return {}
        return {"EmaState.ema": buf, "EmaState.count": torch.ones((), dtype=torch.int32)}
