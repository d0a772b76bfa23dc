"""``bitsandbytes.optim``'s classes on the functional engine (``fo.bitsandbytes.*``), on any
device: ``SGD``, ``SGD8bit``, ``Adam``, ``Adam8bit``, ``AdamW``, ``AdamW8bit``, ``Lion``,
``Lion8bit``, ``AdEMAMix``, ``AdEMAMix8bit``, with bitsandbytes' signatures, checks,
param-group keys and state_dict layout (a bitsandbytes checkpoint loads into these and
back). bitsandbytes itself is never imported.

Per param, as bitsandbytes keeps it: ``step`` (an int), ``state1`` (the first moment;
AdEMAMix: its fast and slow EMAs stacked, ``(2, *shape)``) and ``state2`` (the second
moment), float32, or uint8 codes for params of at least ``min_8bit_size`` elements in
the 8-bit classes, with ``qmap1``/``qmap2`` (the signed and unsigned dynamic maps) and
``absmax1``/``absmax2`` (one float32 per block of 256). ``state_dict()`` nests those
under ``"__bnb_optimizer_quant_state__"``, as bitsandbytes does; both forms load (a loaded
``qmap1``/``qmap2`` is not read back: they are bitsandbytes' fixed dynamic maps).

Differences, by design: ``is_paged`` is accepted and ignored (paging is CUDA memory
management; bitsandbytes also ignores it on CPU); ``args`` may carry ``optim_bits`` and
``min_8bit_size`` but not ``max_unorm > 0`` or ``skip_zeros`` (ValueError); the 8-bit
codes are rounded as bitsandbytes' kernels on the params' device round them: on CPU its
kernels first snap ``x / absmax`` to a 65536-point grid (``rounding="cpu_lut"``, bit for
bit), elsewhere they take the nearest map value (``"nearest"``, the documented scheme);
``fo.bitsandbytes.*`` take either.
"""

from collections.abc import Iterable
from typing import Any, Literal, Optional

import torch

import functional_optim as fo

from .optimizer import Entry, FunctionalOptimizer

__all__ = ["SGD", "SGD8bit", "Adam", "Adam8bit", "AdamW", "AdamW8bit", "Lion", "Lion8bit", "AdEMAMix",
           "AdEMAMix8bit"]

QUANT_KEY = "__bnb_optimizer_quant_state__"
_QUANT_KEYS = ("state1", "state2", "qmap1", "qmap2", "absmax1", "absmax2")


class _Factory:
    """A picklable transform factory whose keyword arguments are bitsandbytes' group keys."""

    def __init__(self, build: str, optim_bits: int, min_8bit_size: int, rounding: str = "nearest"):
        self.build, self.optim_bits, self.min_8bit_size = build, optim_bits, min_8bit_size
        self.rounding = rounding

    def _make(self, **kwargs: Any) -> fo.GradientTransformation:
        return getattr(fo.bitsandbytes, self.build)(optim_bits=self.optim_bits, min_8bit_size=self.min_8bit_size,
                                                    rounding=self.rounding, **kwargs)


class _TwoState(_Factory):
    """Adam, AdamW, AdEMAMix: bitsandbytes' ``Optimizer2State`` group keys."""

    def __call__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, alpha=0.0, t_alpha=None,
                 t_beta3=None) -> fo.GradientTransformation:
        if self.build == "ademamix":
            return self._make(lr=lr, betas=betas, alpha=alpha, t_alpha=t_alpha, t_beta3=t_beta3, eps=eps,
                              weight_decay=weight_decay)
        return self._make(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


class _OneState(_Factory):
    """SGD (``betas = (momentum, dampening)``) and Lion: ``Optimizer1State``'s group keys."""

    def __call__(self, lr=1e-3, betas=(0.9, 0.0), eps=1e-8, weight_decay=0.0) -> fo.GradientTransformation:
        if self.build == "sgd":
            return self._make(lr=lr, momentum=betas[0], dampening=betas[1], weight_decay=weight_decay)
        return self._make(lr=lr, betas=betas, weight_decay=weight_decay)


def _check(lr: Any, eps: Any, betas: Any, weight_decay: Any) -> None:
    # bitsandbytes' checks and messages
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    for i, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {beta}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")


def _config(optim_bits: int, args: Any, min_8bit_size: int) -> tuple[int, int]:
    """(optim_bits, min_8bit_size), from ``args`` when given (bitsandbytes' override)."""
    if args is not None:
        if getattr(args, "max_unorm", 0.0) > 0.0 or getattr(args, "skip_zeros", False):
            raise ValueError("args.max_unorm > 0 and args.skip_zeros are not supported")
        optim_bits, min_8bit_size = args.optim_bits, args.min_8bit_size
    if optim_bits not in (8, 32):
        raise NotImplementedError(f"Amount of optimizer bits not supported: {optim_bits}")
    if not isinstance(min_8bit_size, int) or min_8bit_size < 1:
        raise ValueError(f"Invalid min_8bit_size: {min_8bit_size!r} (expected a positive int)")
    return optim_bits, min_8bit_size


class _Bitsandbytes(FunctionalOptimizer):
    """Shared by the classes: bitsandbytes' per-param keys over the functional state."""

    _moments: tuple[str, ...] = ()  # our state names of state1 (and its stacked second half), state2

    def _setup(self, params: Any, factory: _Factory, hyper: dict[str, Any]) -> None:
        params = list(params)
        tensors = [p for item in params for p in (item["params"] if isinstance(item, dict) else [item])
                   if isinstance(p, torch.Tensor)] if params and isinstance(params[0], dict) else params
        # bitsandbytes rounds as its kernels on the params' device do: a 65536-point grid
        # on CPU, the nearest map value elsewhere (CUDA)
        if all(isinstance(p, torch.Tensor) and p.device.type == "cpu" for p in tensors):
            factory.rounding = "cpu_lut"
        FunctionalOptimizer.__init__(self, params, factory, **hyper)

    # -- per-param entries ----------------------------------------------------------

    def _export_entry(self, entry: Entry) -> Entry:
        cls, first, second, slow = self._moment_names()
        if f"{cls}.count" not in entry:
            return {}
        out: dict[str, Any] = {"step": int(entry[f"{cls}.count"])}
        quantised = f"{cls}.{first}#2" in entry
        halves = [first] + ([slow] if slow else [])
        state1 = [entry[f"{cls}.{n}"] for n in halves]
        out["state1"] = torch.stack(state1) if slow else state1[0]
        if quantised:
            out["qmap1"] = entry["QuantizationMaps.signed"]
        if second:
            out["state2"] = entry[f"{cls}.{second}"]
            if quantised:
                out["qmap2"] = entry["QuantizationMaps.unsigned"]
        if quantised:
            absmax1 = [entry[f"{cls}.{n}#2"] for n in halves]
            out["absmax1"] = torch.stack(absmax1) if slow else absmax1[0]
            if second:
                out["absmax2"] = entry[f"{cls}.{second}#2"]
        return out

    def _import_entry(self, entry: Entry) -> Entry:
        entry = dict(entry)
        entry.update(entry.pop(QUANT_KEY, {}) or {})
        if "step" not in entry:
            return {}
        cls, first, second, slow = self._moment_names()
        out: dict[str, Any] = {f"{cls}.count": torch.as_tensor(entry["step"]).to(torch.int32)}
        pairs = [("state1", ""), ("absmax1", "#2")]
        for key, suffix in pairs:
            if key in entry:
                value = entry[key]
                if slow:
                    out[f"{cls}.{first}{suffix}"], out[f"{cls}.{slow}{suffix}"] = value[0], value[1]
                else:
                    out[f"{cls}.{first}{suffix}"] = value
        if second:
            for key, suffix in (("state2", ""), ("absmax2", "#2")):
                if key in entry:
                    out[f"{cls}.{second}{suffix}"] = entry[key]
        return out

    def _moment_names(self) -> tuple[str, str, Optional[str], Optional[str]]:
        """(state class, first moment, second moment or None, slow EMA or None)."""
        return self._moments  # type: ignore[return-value]

    # -- bitsandbytes' nesting of the quantisation tensors ---------------------------------

    def _build_state_dict(self) -> dict[str, Any]:
        state_dict = super()._build_state_dict()
        for index, entry in list(state_dict["state"].items()):
            nested = {k: entry.pop(k) for k in _QUANT_KEYS if k in entry}
            if nested:
                entry[QUANT_KEY] = nested
        return state_dict


_ADAM = ("ScaleByAdamState", "mu", "nu", None)
_ADEMAMIX = ("ScaleByAdemamixState", "mu", "nu", "mu_slow")
_SGD = ("TraceState", "trace", None, None)
_LION = ("ScaleByLionState", "mu", None, None)


def _adam_init(self, build, params, lr, betas, eps, weight_decay, optim_bits, args, min_8bit_size):
    _check(lr, eps, betas, weight_decay)
    optim_bits, min_8bit_size = _config(optim_bits, args, min_8bit_size)
    self._setup(params, _TwoState(build, optim_bits, min_8bit_size),
                dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))


def _only_32(name: str, amsgrad: bool, optim_bits: int) -> None:
    # the 8-bit classes' own checks (bitsandbytes' messages)
    if amsgrad:
        raise ValueError(f"{name} does not support amsgrad=True")
    if optim_bits != 32:
        raise ValueError(f"{name} only supports optim_bits=32 (default value for compatibility)")


class Adam(_Bitsandbytes):
    """``bitsandbytes.optim.Adam`` (``fo.bitsandbytes.adam``): Adam whose weight decay is
    decoupled, as bitsandbytes' kernels apply it. ``amsgrad`` is accepted and ignored, as
    in bitsandbytes; ``optim_bits=8`` quantises the moments of large params.

    Args:
      params: an iterable of tensors or of param-group dicts.
      lr: >= 0. Default 1e-3.
      betas: each in [0, 1). Default (0.9, 0.999).
      eps: >= 0. Default 1e-8.
      weight_decay: decoupled, >= 0. Default 0.
      amsgrad: ignored. Default False.
      optim_bits: 32 or 8. Default 32.
      args: None, or an object with ``optim_bits`` and ``min_8bit_size`` (bitsandbytes').
      min_8bit_size: smallest param with 8-bit state. Default 4096.
      is_paged: ignored. Default False.

    References:
      Dettmers et al., *8-bit Optimizers via Block-wise Quantization*, arXiv:2110.02861.

    Example:
      >>> import torch
      >>> from adapters.bnb import Adam
      >>> w = torch.nn.Parameter(torch.ones(2))
      >>> opt = Adam([w], lr=0.1, weight_decay=0.5)
      >>> w.grad = torch.ones(2)
      >>> opt.step()
      >>> w.detach(), sorted(opt.state_dict()["state"][0]["__bnb_optimizer_quant_state__"])
      (tensor([0.8500, 0.8500]), ['state1', 'state2'])
    """

    _moments = _ADAM

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False,
                 optim_bits=32, args=None, min_8bit_size=4096, is_paged=False):
        _adam_init(self, "adam", params, lr, betas, eps, weight_decay, optim_bits, args, min_8bit_size)


class Adam8bit(_Bitsandbytes):
    """``bitsandbytes.optim.Adam8bit``: :class:`Adam` with 8-bit moments for params of at
    least ``min_8bit_size`` elements (``amsgrad`` must be False and ``optim_bits`` 32, as
    in bitsandbytes).

    Example:
      >>> import torch
      >>> from adapters.bnb import Adam8bit
      >>> w = torch.nn.Parameter(torch.ones(300))
      >>> opt = Adam8bit([w], min_8bit_size=256)
      >>> w.grad = torch.ones(300)
      >>> opt.step()
      >>> {k: v.dtype for k, v in opt.state[w].items() if k in ("state1", "absmax1")}
      {'state1': torch.uint8, 'absmax1': torch.float32}
    """

    _moments = _ADAM

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False,
                 optim_bits=32, args=None, min_8bit_size=4096, is_paged=False):
        _only_32("Adam8bit", amsgrad, optim_bits)
        _adam_init(self, "adam", params, lr, betas, eps, weight_decay, 8, args, min_8bit_size)


class AdamW(_Bitsandbytes):
    """``bitsandbytes.optim.AdamW``: :class:`Adam` with ``weight_decay=1e-2`` by default.

    Example:
      >>> import torch
      >>> from adapters.bnb import AdamW
      >>> AdamW([torch.nn.Parameter(torch.ones(2))]).param_groups[0]["weight_decay"]
      0.01
    """

    _moments = _ADAM

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 optim_bits=32, args=None, min_8bit_size=4096, is_paged=False):
        _adam_init(self, "adamw", params, lr, betas, eps, weight_decay, optim_bits, args, min_8bit_size)


class AdamW8bit(_Bitsandbytes):
    """``bitsandbytes.optim.AdamW8bit``: :class:`AdamW` with 8-bit moments.

    Example:
      >>> import torch
      >>> from adapters.bnb import AdamW8bit
      >>> AdamW8bit([torch.nn.Parameter(torch.ones(2))], amsgrad=True)
      Traceback (most recent call last):
      ...
      ValueError: AdamW8bit does not support amsgrad=True
    """

    _moments = _ADAM

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 optim_bits=32, args=None, min_8bit_size=4096, is_paged=False):
        _only_32("AdamW8bit", amsgrad, optim_bits)
        _adam_init(self, "adamw", params, lr, betas, eps, weight_decay, 8, args, min_8bit_size)


def _sgd_init(self, params, lr, momentum, dampening, weight_decay, optim_bits, args, min_8bit_size):
    if momentum == 0:
        raise NotImplementedError("SGD without momentum is not supported!")
    betas = (momentum, dampening)
    _check(lr, 0.0, betas, weight_decay)
    optim_bits, min_8bit_size = _config(optim_bits, args, min_8bit_size)
    self._setup(params, _OneState("sgd", optim_bits, min_8bit_size),
                dict(lr=lr, betas=betas, eps=0.0, weight_decay=weight_decay))


class SGD(_Bitsandbytes):
    """``bitsandbytes.optim.SGD`` (``fo.bitsandbytes.sgd``): heavy-ball momentum with coupled
    decay; ``dampening`` and ``nesterov`` are accepted and ignored, as bitsandbytes'
    kernels ignore them; ``momentum=0`` raises NotImplementedError, as there. The group
    keeps bitsandbytes' keys: ``betas = (momentum, dampening)``, ``eps = 0``.

    Example:
      >>> import torch
      >>> from adapters.bnb import SGD
      >>> w = torch.nn.Parameter(torch.ones(2))
      >>> opt = SGD([w], lr=0.1, momentum=0.9, nesterov=True)
      >>> w.grad = torch.ones(2)
      >>> opt.step()
      >>> w.detach(), opt.param_groups[0]["betas"]
      (tensor([0.9000, 0.9000]), (0.9, 0))
    """

    _moments = _SGD

    def __init__(self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, optim_bits=32,
                 args=None, min_8bit_size=4096):
        _sgd_init(self, params, lr, momentum, dampening, weight_decay, optim_bits, args, min_8bit_size)


class SGD8bit(_Bitsandbytes):
    """``bitsandbytes.optim.SGD8bit``: :class:`SGD` with an 8-bit momentum.

    Example:
      >>> import torch
      >>> from adapters.bnb import SGD8bit
      >>> SGD8bit([torch.nn.Parameter(torch.ones(2))], lr=0.1)
      Traceback (most recent call last):
      ...
      NotImplementedError: SGD without momentum is not supported!
    """

    _moments = _SGD

    def __init__(self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, args=None,
                 min_8bit_size=4096):
        _sgd_init(self, params, lr, momentum, dampening, weight_decay, 8, args, min_8bit_size)


def _lion_init(self, params, lr, betas, weight_decay, optim_bits, args, min_8bit_size):
    _check(lr, 0.0, betas, weight_decay)
    optim_bits, min_8bit_size = _config(optim_bits, args, min_8bit_size)
    self._setup(params, _OneState("lion", optim_bits, min_8bit_size),
                dict(lr=lr, betas=tuple(betas), eps=0.0, weight_decay=weight_decay))


class Lion(_Bitsandbytes):
    """``bitsandbytes.optim.Lion`` (``fo.bitsandbytes.lion``): Lion with decoupled decay.

    Example:
      >>> import torch
      >>> from adapters.bnb import Lion
      >>> w = torch.nn.Parameter(torch.ones(2))
      >>> opt = Lion([w], lr=0.1)
      >>> w.grad = torch.tensor([1.0, -1.0])
      >>> opt.step()
      >>> w.detach()
      tensor([0.9000, 1.1000])
    """

    _moments = _LION

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0, optim_bits=32, args=None,
                 min_8bit_size=4096, is_paged=False):
        _lion_init(self, params, lr, betas, weight_decay, optim_bits, args, min_8bit_size)


class Lion8bit(_Bitsandbytes):
    """``bitsandbytes.optim.Lion8bit``: :class:`Lion` with an 8-bit momentum.

    Example:
      >>> import torch
      >>> from adapters.bnb import Lion8bit
      >>> Lion8bit([torch.nn.Parameter(torch.ones(2))]).param_groups[0]["eps"]
      0.0
    """

    _moments = _LION

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0, args=None, min_8bit_size=4096,
                 is_paged=False):
        _lion_init(self, params, lr, betas, weight_decay, 8, args, min_8bit_size)


def _ademamix_init(self, params, lr, betas, alpha, t_alpha, t_beta3, eps, weight_decay, optim_bits,
                   min_8bit_size):
    _check(lr, eps, betas, weight_decay)
    optim_bits, min_8bit_size = _config(optim_bits, None, min_8bit_size)
    self._setup(params, _TwoState("ademamix", optim_bits, min_8bit_size),
                dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, alpha=alpha, t_alpha=t_alpha,
                     t_beta3=t_beta3))


class AdEMAMix(_Bitsandbytes):
    """``bitsandbytes.optim.AdEMAMix`` (``fo.bitsandbytes.ademamix``, Pagliardini et al.
    2024, arXiv:2409.03137), with the alpha and beta3 warm-up schedulers; ``state1`` holds
    the fast and slow EMAs stacked, ``(2, *shape)``.

    Example:
      >>> import torch
      >>> from adapters.bnb import AdEMAMix
      >>> w = torch.nn.Parameter(torch.ones(2))
      >>> opt = AdEMAMix([w], lr=0.1, weight_decay=0.0)
      >>> w.grad = torch.ones(2)
      >>> opt.step()
      >>> opt.state[w]["state1"].shape
      torch.Size([2, 2])
    """

    _moments = _ADEMAMIX

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
        alpha: float = 5.0,
        t_alpha: Optional[int] = None,
        t_beta3: Optional[int] = None,
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        optim_bits: Literal[8, 32] = 32,
        min_8bit_size: int = 4096,
        is_paged: bool = False,
    ):
        _ademamix_init(self, params, lr, betas, alpha, t_alpha, t_beta3, eps, weight_decay, optim_bits,
                       min_8bit_size)


class AdEMAMix8bit(_Bitsandbytes):
    """``bitsandbytes.optim.AdEMAMix8bit``: :class:`AdEMAMix` with 8-bit moments
    (``absmax1`` is ``(2, blocks)``: one row per EMA).

    Example:
      >>> import torch
      >>> from adapters.bnb import AdEMAMix8bit
      >>> AdEMAMix8bit([torch.nn.Parameter(torch.ones(2))]).param_groups[0]["alpha"]
      5.0
    """

    _moments = _ADEMAMIX

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
        alpha: float = 5.0,
        t_alpha: Optional[int] = None,
        t_beta3: Optional[int] = None,
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        min_8bit_size: int = 4096,
        is_paged: bool = False,
    ):
        _ademamix_init(self, params, lr, betas, alpha, t_alpha, t_beta3, eps, weight_decay, 8, min_8bit_size)
