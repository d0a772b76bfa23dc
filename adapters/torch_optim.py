"""Drop-in replacements for torch.optim's classes: same signatures, same trajectories,
and state_dicts in torch's format, so checkpoints load both ways.

Each class names its functional alias and a table from torch's per-param state keys to
the names of the matching state leaves (``"<StateClass>.<field>"``, see ``state_io``).
``foreach`` is accepted and ignored (the engine chooses), and so is ``fused`` except that
``fused=False`` keeps the functional update in the drop-ins whose eager steps may run
torch's fused kernels (Adam, AdamW, SGD, Adagrad: ``adapters.fused``); ``capturable`` and
``differentiable`` are refused (differentiate through steps with functional_optim
directly). ``compile=True`` selects the compiled step (see FunctionalOptimizer).
RMSprop, Adadelta, Adamax, NAdam, RAdam, ASGD, SparseAdam (and Muon) run their eager steps as
torch's for-loop in place on their state (``adapters.eager_steps``; no switch: torch's classes take no
``fused``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

import functional_optim as fo

from . import torch_checks
from .optimizer import Entry, FunctionalOptimizer

_TORCH_FLAGS = ("foreach", "fused", "capturable", "differentiable")


def _torch_step(count: torch.Tensor) -> torch.Tensor:
    """Our int32 step counter as torch's float ``step`` tensor."""
    dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    return count.detach().to(dtype=dtype, device="cpu").clone()


def _torch_name(cls: type) -> str:
    """The torch.optim class a drop-in (or a user's subclass of one) stands for."""
    return next((c.__name__ for c in cls.__mro__
                 if c.__module__ in ("adapters.torch_optim", "adapters.lbfgs", "adapters.torch_optim_matrix")), "")


class _TorchCompatible(FunctionalOptimizer):
    """Shared by the drop-ins: torch's flags, and state in torch's keys.

    ``_state_keys`` maps a torch key to one or more of our state names (the first is
    exported; all are set on import); keys in ``_step_keys`` are step counters (float in
    torch, int32 here).
    """

    _state_keys: dict[str, tuple[str, ...]] = {}
    _step_keys: frozenset[str] = frozenset({"step"})
    _eager_state = False  # torch creates state at a param's first step (Adagrad: at construction)
    _int_step = False  # torch keeps ``step`` as a Python int (SparseAdam) rather than a tensor
    _fixed_keys: dict[str, Any] = {}  # group keys torch's class always sets (AdamW's decoupled_weight_decay)
    _tracks_steps = False  # ``state`` lists a param when its exported entry is non-empty (see _export_entry)

    def _setup(self, params: Iterable[Any], factory: Callable[..., fo.GradientTransformation],
               arguments: dict[str, Any], compile: bool) -> None:
        # torch's checks come first, before the params are looked at (as in torch)
        torch_checks.check_arguments(_torch_name(type(self)), arguments)
        flags = {name: arguments.pop(name) for name in _TORCH_FLAGS if name in arguments}
        for flag in ("capturable", "differentiable"):
            if flags.get(flag):
                raise ValueError(f"{flag}=True is not supported by {type(self).__name__}; "
                                 "use functional_optim directly to differentiate through steps")
        self._passthrough = {**flags, **self._fixed_keys}
        FunctionalOptimizer.__init__(self, params, factory, compile=compile, **arguments)

    def _export_entry(self, entry: Entry) -> Entry:
        step_name = self._state_keys["step"][0]
        if not self._eager_state and step_name in entry and int(entry[step_name]) == 0:
            return {}  # never stepped: torch has no state for it yet
        out = {}
        for key, names in self._state_keys.items():
            if names[0] in entry:
                value = entry[names[0]]
                if key in self._step_keys:
                    value = int(value) if self._int_step else _torch_step(value)
                out[key] = value
        return out

    def _import_entry(self, entry: Entry) -> Entry:
        out = {}
        for key, names in self._state_keys.items():
            value = entry.get(key)
            if value is None:
                continue
            if key in self._step_keys:
                value = torch.as_tensor(value).to(torch.int32)
            for name in names:
                out[name] = value
        return out


class SGD(_TorchCompatible):
    """``torch.optim.SGD`` on the functional engine (``fo.sgd``), with torch's signature.

    Eager steps run torch's fused SGD kernel on this optimizer's state where it applies
    (``adapters.fused``; ``fused=False`` keeps the functional update).

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

    _fused_family = "sgd"

    def __init__(self, params: Iterable[Any], lr: float | torch.Tensor = 1e-3, momentum: float = 0,
                 dampening: float = 0, weight_decay: float = 0, nesterov: bool = False, *,
                 maximize: bool = False, foreach: bool | None = None, differentiable: bool = False,
                 fused: bool | None = None, compile: bool = False):
        self._setup(params, fo.sgd, dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
            maximize=maximize, foreach=foreach, differentiable=differentiable, fused=fused), compile)

    def _export_entry(self, entry: Entry) -> Entry:
        # torch keeps a momentum buffer only once a param has had a step
        if "TraceState.trace" not in entry:
            return {}
        return {"momentum_buffer": entry["TraceState.trace"]} if bool(entry["TraceState.count"] > 0) else {}

    def _import_entry(self, entry: Entry) -> Entry:
        buf = entry.get("momentum_buffer")
        if buf is None:
            return {}
        return {"TraceState.trace": buf, "TraceState.count": torch.ones((), dtype=torch.int32)}


_ADAM_KEYS = {"step": ("ScaleByAdamState.count",), "exp_avg": ("ScaleByAdamState.mu",),
              "exp_avg_sq": ("ScaleByAdamState.nu",), "max_exp_avg_sq": ("ScaleByAdamState.nu_max",)}


class Adam(_TorchCompatible):
    """``torch.optim.Adam`` on the functional engine (``fo.adam``), with torch's signature.

    Eager steps run torch's fused Adam kernel on this optimizer's state where it applies
    (``adapters.fused``; ``fused=False`` keeps the functional update).

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

    _state_keys = _ADAM_KEYS
    _fused_family = "adam"

    def __init__(self, params: Iterable[Any], lr: float | torch.Tensor = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0,
                 amsgrad: bool = False, *, foreach: bool | None = None, maximize: bool = False,
                 capturable: bool = False, differentiable: bool = False, fused: bool | None = None,
                 decoupled_weight_decay: bool = False, compile: bool = False):
        self._setup(params, fo.adam, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, foreach=foreach,
            maximize=maximize, capturable=capturable, differentiable=differentiable, fused=fused,
            decoupled_weight_decay=decoupled_weight_decay), compile)


class AdamW(_TorchCompatible):
    """``torch.optim.AdamW`` on the functional engine (``fo.adamw``), with torch's signature.

    Eager steps run torch's fused AdamW kernel on this optimizer's state where it applies
    (``adapters.fused``; ``fused=False`` keeps the functional update).

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

    _state_keys = _ADAM_KEYS
    _fixed_keys = {"decoupled_weight_decay": True}
    _fused_family = "adam"

    def __init__(self, params: Iterable[Any], lr: float | torch.Tensor = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 amsgrad: bool = False, *, maximize: bool = False, foreach: bool | None = None,
                 capturable: bool = False, differentiable: bool = False, fused: bool | None = None,
                 compile: bool = False):
        self._setup(params, fo.adamw, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
            foreach=foreach, capturable=capturable, differentiable=differentiable, fused=fused), compile)


class RMSprop(_TorchCompatible):
    """``torch.optim.RMSprop`` on the functional engine (``fo.rmsprop``), with torch's signature.

    Example:
      >>> import torch
      >>> from adapters import RMSprop
      >>> w = torch.nn.Parameter(torch.zeros(2))
      >>> opt = RMSprop([w], lr=0.01, momentum=0.9, centered=True)
      >>> w.grad = torch.ones(2)
      >>> opt.step()
      >>> sorted(opt.state_dict()["state"][0])
      ['grad_avg', 'momentum_buffer', 'square_avg', 'step']
    """

    _state_keys = {"step": ("ScaleByRmsState.count",), "square_avg": ("ScaleByRmsState.nu",),
                   "grad_avg": ("ScaleByRmsState.mu",),
                   "momentum_buffer": ("TraceState.trace",)}
    _fused_family = "rmsprop"  # eager steps: torch's for-loop in place (adapters.eager_steps)

    def __init__(self, params: Iterable[Any], lr: float | torch.Tensor = 1e-2, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0, momentum: float = 0, centered: bool = False,
                 capturable: bool = False, foreach: bool | None = None, maximize: bool = False,
                 differentiable: bool = False, *, compile: bool = False):
        self._setup(params, fo.rmsprop, dict(
            lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum, centered=centered,
            capturable=capturable, foreach=foreach, maximize=maximize, differentiable=differentiable), compile)

    def _import_entry(self, entry: Entry) -> Entry:
        out = super()._import_entry(entry)
        if "momentum_buffer" in entry and "step" in entry:  # the trace's own counter follows torch's step
            out["TraceState.count"] = torch.as_tensor(entry["step"]).to(torch.int32)
        return out


class Adagrad(_TorchCompatible):
    """``torch.optim.Adagrad`` on the functional engine (``fo.adagrad``), with torch's signature.

    Eager steps run torch's fused Adagrad kernel on this optimizer's state where it applies
    (``adapters.fused``; ``fused=False`` keeps the functional update).

    Example:
      >>> import torch
      >>> from adapters import Adagrad
      >>> w = torch.nn.Parameter(torch.zeros(2))
      >>> opt = Adagrad([w], lr=0.1, initial_accumulator_value=0.1)
      >>> opt.state_dict()["state"][0]["sum"]
      tensor([0.1000, 0.1000])
    """

    _state_keys = {"step": ("ScaleByRssState.count",), "sum": ("ScaleByRssState.sum_of_squares",)}
    _eager_state = True
    _fused_family = "adagrad"

    def __init__(self, params: Iterable[Any], lr: float | torch.Tensor = 1e-2, lr_decay: float = 0,
                 weight_decay: float = 0, initial_accumulator_value: float = 0, eps: float = 1e-10,
                 foreach: bool | None = None, *, maximize: bool = False, differentiable: bool = False,
                 fused: bool | None = None, compile: bool = False):
        self._setup(params, fo.adagrad, dict(
            lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value, eps=eps, foreach=foreach,
            maximize=maximize, differentiable=differentiable, fused=fused), compile)


class Adadelta(_TorchCompatible):
    """``torch.optim.Adadelta`` on the functional engine (``fo.adadelta``), with torch's signature.

    Example:
      >>> import torch
      >>> from adapters import Adadelta
      >>> w = torch.nn.Parameter(torch.zeros(2))
      >>> opt = Adadelta([w])
      >>> w.grad = torch.ones(2)
      >>> opt.step()
      >>> sorted(opt.state_dict()["state"][0])
      ['acc_delta', 'square_avg', 'step']
    """

    _state_keys = {"step": ("ScaleByAdaDeltaState.count",), "square_avg": ("ScaleByAdaDeltaState.e_g",),
                   "acc_delta": ("ScaleByAdaDeltaState.e_x",)}
    _fused_family = "adadelta"  # eager steps: torch's for-loop in place (adapters.eager_steps)

    def __init__(self, params: Iterable[Any], lr: float | torch.Tensor = 1.0, rho: float = 0.9,
                 eps: float = 1e-6, weight_decay: float = 0, foreach: bool | None = None, *,
                 capturable: bool = False, maximize: bool = False, differentiable: bool = False,
                 compile: bool = False):
        self._setup(params, fo.adadelta, dict(
            lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, foreach=foreach, capturable=capturable,
            maximize=maximize, differentiable=differentiable), compile)


class Adamax(_TorchCompatible):
    """``torch.optim.Adamax`` on the functional engine (``fo.adamax``), with torch's signature.

    Example:
      >>> import torch
      >>> from adapters import Adamax
      >>> w = torch.nn.Parameter(torch.zeros(2))
      >>> opt = Adamax([w])
      >>> w.grad = torch.ones(2)
      >>> opt.step()
      >>> sorted(opt.state_dict()["state"][0])
      ['exp_avg', 'exp_inf', 'step']
    """

    _state_keys = {"step": ("ScaleByAdamaxState.count",), "exp_avg": ("ScaleByAdamaxState.mu",),
                   "exp_inf": ("ScaleByAdamaxState.nu",)}
    _fused_family = "adamax"  # eager steps: torch's for-loop in place (adapters.eager_steps)

    def __init__(self, params: Iterable[Any], lr: float | torch.Tensor = 2e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0,
                 foreach: bool | None = None, *, maximize: bool = False, differentiable: bool = False,
                 capturable: bool = False, compile: bool = False):
        self._setup(params, fo.adamax, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=foreach, maximize=maximize,
            differentiable=differentiable, capturable=capturable), compile)


class NAdam(_TorchCompatible):
    """``torch.optim.NAdam`` on the functional engine (``fo.nadam``), with torch's signature.

    Example:
      >>> import torch
      >>> from adapters import NAdam
      >>> w = torch.nn.Parameter(torch.zeros(2))
      >>> opt = NAdam([w])
      >>> w.grad = torch.ones(2)
      >>> opt.step()
      >>> sorted(opt.state_dict()["state"][0])
      ['exp_avg', 'exp_avg_sq', 'mu_product', 'step']
    """

    _state_keys = {"step": ("ScaleByNadamState.count",), "exp_avg": ("ScaleByNadamState.mu",),
                   "exp_avg_sq": ("ScaleByNadamState.nu",), "mu_product": ("ScaleByNadamState.mu_product",)}
    _fused_family = "nadam"  # eager steps: torch's for-loop in place (adapters.eager_steps)

    def __init__(self, params: Iterable[Any], lr: float | torch.Tensor = 2e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0,
                 momentum_decay: float = 4e-3, decoupled_weight_decay: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False, compile: bool = False):
        self._setup(params, fo.nadam, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, momentum_decay=momentum_decay,
            decoupled_weight_decay=decoupled_weight_decay, foreach=foreach, maximize=maximize,
            capturable=capturable, differentiable=differentiable), compile)


class RAdam(_TorchCompatible):
    """``torch.optim.RAdam`` on the functional engine (``fo.radam``), with torch's signature.

    Example:
      >>> import torch
      >>> from adapters import RAdam
      >>> w = torch.nn.Parameter(torch.zeros(2))
      >>> opt = RAdam([w])
      >>> w.grad = torch.ones(2)
      >>> opt.step()
      >>> sorted(opt.state_dict()["state"][0])
      ['exp_avg', 'exp_avg_sq', 'step']
    """

    _state_keys = {"step": ("ScaleByAdamState.count",), "exp_avg": ("ScaleByAdamState.mu",),
                   "exp_avg_sq": ("ScaleByAdamState.nu",)}
    _fused_family = "radam"  # eager steps: torch's for-loop in place (adapters.eager_steps)

    def __init__(self, params: Iterable[Any], lr: float | torch.Tensor = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0,
                 decoupled_weight_decay: bool = False, *, foreach: bool | None = None,
                 maximize: bool = False, capturable: bool = False, differentiable: bool = False,
                 compile: bool = False):
        self._setup(params, fo.radam, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay, foreach=foreach, maximize=maximize,
            capturable=capturable, differentiable=differentiable), compile)


class ASGD(_TorchCompatible):
    """``torch.optim.ASGD`` on the functional engine (``fo.asgd``), with torch's signature.

    Example:
      >>> import torch
      >>> from adapters import ASGD
      >>> w = torch.nn.Parameter(torch.zeros(2))
      >>> opt = ASGD([w])
      >>> w.grad = torch.ones(2)
      >>> opt.step()
      >>> sorted(opt.state_dict()["state"][0])
      ['ax', 'eta', 'mu', 'step']
    """

    _state_keys = {"step": ("ScaleByAsgdState.count",), "eta": ("ScaleByAsgdState.eta",),
                   "mu": ("ScaleByAsgdState.mu",), "ax": ("ScaleByAsgdState.ax",)}
    _fused_family = "asgd"  # eager steps: torch's for-loop in place (adapters.eager_steps)

    def __init__(self, params: Iterable[Any], lr: float | torch.Tensor = 1e-2, lambd: float = 1e-4,
                 alpha: float = 0.75, t0: float = 1e6, weight_decay: float = 0, foreach: bool | None = None,
                 maximize: bool = False, differentiable: bool = False, capturable: bool = False, *,
                 compile: bool = False):
        self._setup(params, fo.asgd, dict(
            lr=lr, lambd=lambd, alpha=alpha, t0=t0, weight_decay=weight_decay, foreach=foreach,
            maximize=maximize, differentiable=differentiable, capturable=capturable), compile)


class Rprop(_TorchCompatible):
    """``torch.optim.Rprop`` on the functional engine (``fo.rprop``), with torch's signature.

    Example:
      >>> import torch
      >>> from adapters import Rprop
      >>> w = torch.nn.Parameter(torch.zeros(2))
      >>> opt = Rprop([w])
      >>> w.grad = torch.ones(2)
      >>> opt.step()
      >>> sorted(opt.state_dict()["state"][0])
      ['prev', 'step', 'step_size']
    """

    _state_keys = {"step": ("ScaleByRpropState.count",), "prev": ("ScaleByRpropState.prev_updates",),
                   "step_size": ("ScaleByRpropState.step_sizes",)}

    def __init__(self, params: Iterable[Any], lr: float | torch.Tensor = 1e-2,
                 etas: tuple[float, float] = (0.5, 1.2), step_sizes: tuple[float, float] = (1e-6, 50), *,
                 capturable: bool = False, foreach: bool | None = None, maximize: bool = False,
                 differentiable: bool = False, compile: bool = False):
        self._setup(params, fo.rprop, dict(
            lr=lr, etas=etas, step_sizes=step_sizes, capturable=capturable, foreach=foreach,
            maximize=maximize, differentiable=differentiable), compile)


class SparseAdam(_TorchCompatible):
    """``torch.optim.SparseAdam`` on the functional engine (``fo.sparse_adam``), with torch's
    signature: sparse gradients (``nn.Embedding(sparse=True)``) update only the rows present.

    Example:
      >>> import torch
      >>> from adapters import SparseAdam
      >>> emb = torch.nn.Embedding(4, 2, sparse=True)
      >>> opt = SparseAdam(emb.parameters(), lr=0.1)
      >>> emb(torch.tensor([1])).sum().backward()
      >>> before = emb.weight.detach().clone()
      >>> opt.step()
      >>> torch.equal(emb.weight[0], before[0]), torch.equal(emb.weight[1], before[1])
      (True, False)
    """

    _state_keys = {"step": ("ScaleBySparseAdamState.count",), "exp_avg": ("ScaleBySparseAdamState.mu",),
                   "exp_avg_sq": ("ScaleBySparseAdamState.nu",)}
    _int_step = True
    _fused_family = "sparse_adam"  # eager steps: torch's for-loop in place (adapters.eager_steps)

    def __init__(self, params: Iterable[Any], lr: float | torch.Tensor = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, maximize: bool = False):
        self._setup(params, fo.sparse_adam, dict(lr=lr, betas=betas, eps=eps, maximize=maximize), False)
