"""Drop-in replacements for torch.optim's classes: same signatures, same trajectories,
and state_dicts in torch's format, so checkpoints load both ways."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

import functional_optim as fo

from .optimizer import Entry, FunctionalOptimizer

_ADAM = "ScaleByAdamState"
_TRACE = "TraceState"


def _torch_step(count: torch.Tensor) -> torch.Tensor:
    dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    return count.detach().to(dtype=dtype, device="cpu").clone()


class _TorchCompatible(FunctionalOptimizer):
    """Shared by the drop-ins: torch-only flags accepted and kept in the groups."""

    def __init__(self, params: Iterable[Any], factory: Any, torch_flags: dict[str, Any], *,
                 compile: bool = False, **hyperparams: Any):
        for flag in ("foreach", "fused", "capturable", "differentiable"):
            if torch_flags.get(flag) and flag in ("capturable", "differentiable"):
                raise ValueError(f"{flag}=True is not supported by {type(self).__name__}; "
                                 "use functional_optim directly to differentiate through steps")
        self._passthrough = dict(torch_flags)
        super().__init__(params, factory, compile=compile, **hyperparams)


class SGD(_TorchCompatible):
    """``torch.optim.SGD`` on the functional engine (``fo.sgd``), with torch's signature.

    ``foreach``/``fused`` are accepted and ignored (the engine chooses); ``compile=True``
    runs the compiled flat-buffer step.

    Example:
      >>> import torch
      >>> from adapters import SGD
      >>> w = torch.nn.Parameter(torch.ones(2))
      >>> opt = SGD([w], lr=0.1, momentum=0.9)
      >>> w.grad = torch.ones(2)
      >>> opt.step()
      >>> w
      Parameter containing:
      tensor([0.9000, 0.9000], requires_grad=True)
    """

    def __init__(self, params: Iterable[Any], lr: float | torch.Tensor = 1e-3, momentum: float = 0,
                 dampening: float = 0, weight_decay: float = 0, nesterov: bool = False, *,
                 maximize: bool = False, foreach: bool | None = None, differentiable: bool = False,
                 fused: bool | None = None, compile: bool = False):
        super().__init__(params, fo.sgd, dict(foreach=foreach, differentiable=differentiable, fused=fused),
                         compile=compile, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov, maximize=maximize)

    def _export_entry(self, entry: Entry) -> Entry:
        # torch keeps a momentum buffer only once a param has had a step
        if f"{_TRACE}.trace" not in entry:
            return {}
        started = bool(entry[f"{_TRACE}.count"] > 0)
        return {"momentum_buffer": entry[f"{_TRACE}.trace"] if started else None}

    def _import_entry(self, entry: Entry) -> Entry:
        buf = entry.get("momentum_buffer")
        if buf is None:
            return {}
        return {f"{_TRACE}.trace": buf, f"{_TRACE}.count": torch.ones((), dtype=torch.int32)}


class Adam(_TorchCompatible):
    """``torch.optim.Adam`` on the functional engine (``fo.adam``), with torch's signature.

    ``foreach``/``fused`` are accepted and ignored; ``compile=True`` runs the compiled
    flat-buffer step (at the speed of torch's fused kernel on CPU).

    Example:
      >>> import torch
      >>> from adapters import Adam
      >>> w = torch.nn.Parameter(torch.zeros(2))
      >>> opt = Adam([w], lr=0.1)
      >>> w.grad = torch.ones(2)
      >>> opt.step()
      >>> opt.state_dict()["state"][0]["step"]
      tensor(1.)
    """

    def __init__(self, params: Iterable[Any], lr: float | torch.Tensor = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0,
                 amsgrad: bool = False, *, foreach: bool | None = None, maximize: bool = False,
                 capturable: bool = False, differentiable: bool = False, fused: bool | None = None,
                 decoupled_weight_decay: bool = False, compile: bool = False):
        super().__init__(params, fo.adam, dict(foreach=foreach, capturable=capturable,
                                               differentiable=differentiable, fused=fused),
                         compile=compile, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=decoupled_weight_decay)

    def _export_entry(self, entry: Entry) -> Entry:
        out = {"step": _torch_step(entry[f"{_ADAM}.count"]),
               "exp_avg": entry[f"{_ADAM}.mu"], "exp_avg_sq": entry[f"{_ADAM}.nu"]}
        if f"{_ADAM}.nu_max" in entry:
            out["max_exp_avg_sq"] = entry[f"{_ADAM}.nu_max"]
        return out

    def _import_entry(self, entry: Entry) -> Entry:
        names = {"exp_avg": "mu", "exp_avg_sq": "nu", "max_exp_avg_sq": "nu_max"}
        out = {f"{_ADAM}.{ours}": entry[theirs] for theirs, ours in names.items() if theirs in entry}
        if "step" in entry:
            out[f"{_ADAM}.count"] = torch.as_tensor(entry["step"]).to(torch.int32)
        return out


class AdamW(Adam):
    """``torch.optim.AdamW`` on the functional engine (``fo.adamw``), with torch's signature.

    Example:
      >>> import torch
      >>> from adapters import AdamW
      >>> w = torch.nn.Parameter(torch.ones(2))
      >>> opt = AdamW([w], lr=0.1, weight_decay=0.5)
      >>> w.grad = torch.ones(2)
      >>> opt.step()
      >>> w
      Parameter containing:
      tensor([0.8500, 0.8500], requires_grad=True)
    """

    def __init__(self, params: Iterable[Any], lr: float | torch.Tensor = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 amsgrad: bool = False, *, maximize: bool = False, foreach: bool | None = None,
                 capturable: bool = False, differentiable: bool = False, fused: bool | None = None,
                 compile: bool = False):
        _TorchCompatible.__init__(self, params, fo.adamw, dict(foreach=foreach, capturable=capturable,
                                                               differentiable=differentiable, fused=fused),
                                  compile=compile, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                  amsgrad=amsgrad, maximize=maximize)
