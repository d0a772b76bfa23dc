"""Eager steps of the drop-ins torch has no fused kernel for, as torch's for-loop, in place.

``RMSprop`` (plain, momentum, centered), ``Adadelta``, ``Adamax``, ``NAdam``, ``RAdam`` and ``ASGD``
drop-ins run their eager (``compile=False``) step here, and so do ``Adam``/``AdamW`` where
torch's fused kernel does not compute torch's default step (a tensor ``lr`` without
``fused=True``: torch's loop rounds its step size in the lr's dtype, the kernel in the
params'; params of mixed dtypes): one short sequence of in-place
torch ops per param, on the functional state's own leaves, in the order of torch's
single-tensor for-loop (``foreach=False``, torch's CPU default), so every param and state
value rounds exactly as there (``tests/test_adapter_eager_steps.py`` checks it bit for bit).
It is at least as fast as torch's loop, not by doing other math, but by moving memory
less (the functional update writes the whole update before applying it; this fuses the
last division into the param update, ``p.addcdiv_``, as torch's loop does):

* no param-sized allocation: the temporaries torch makes per param and step (``-grad``,
  ``grad + wd * p``, RMSprop's ``sqrt(v) + eps``, ...) are written into scratch buffers
  the engine keeps (:class:`Scratch`: one flat buffer per slot, dtype and device, the
  size of the largest param, viewed with each param's layout). Torch's allocations cost
  most on large params (fresh pages each step): on one 10M-element tensor RMSprop,
  Adadelta, Adamax and NAdam take 0.4-0.5 of the time of torch's loop;
* RMSprop, Adadelta, Adamax, NAdam, RAdam and ASGD run contiguous params of at least
  ``2 * CHUNK`` elements piece by piece, the whole op sequence per piece while it is in
  cache (``_chunks``);
* Python work per step is about torch's own (a few ops per param); the state's leaves
  are looked up once per state, not per step, and the counters advance in one call.

It applies when: every present gradient is dense, each param real floating point (not a
DTensor) with a gradient of its dtype and device, the hyperparameters plain numbers
(``lr`` a number or a one-element tensor, which, as in torch's loop, makes the step's
scalars tensor arithmetic in the lr's dtype), and no user's ``torch.compile`` traces the
step. Otherwise (complex or sparse params, tensor hyperparameters other than ``lr``, ...)
the step runs the functional update, which agrees with torch's loop to rounding. There is no switch: torch's classes
take no ``fused`` argument, and ``foreach`` is ignored as for every drop-in; the
functional update itself runs with ``compile=True`` or ``FunctionalOptimizer(params,
fo.rmsprop, ...)``. The group's values are validated by the functional alias before
each dispatched step (``StepCall.eager_tx``), exactly as on the functional path.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import torch

from functional_optim import kernels as k
from functional_optim.steps import increment
from functional_optim.transforms.newton_schulz import newton_schulz
from functional_optim.transforms.shape_scaling import shape_lr_ratio

from . import state_io
from .fused import _dense

Entry = dict[str, Any]

# the numeric hyperparameters (besides lr) each family reads; a tensor among them falls back
_NUMBERS = {
    "adam": ("betas", "eps", "weight_decay"),
    "rmsprop": ("alpha", "eps", "weight_decay", "momentum"),
    "adadelta": ("rho", "eps", "weight_decay"),
    "adamax": ("betas", "eps", "weight_decay"),
    "nadam": ("betas", "eps", "weight_decay", "momentum_decay"),
    "radam": ("betas", "eps", "weight_decay"),
    "asgd": ("lambd", "alpha", "t0", "weight_decay"),
    "sparse_adam": ("betas", "eps"),
    "muon": ("weight_decay", "momentum", "eps", "ns_coefficients"),
}
# families whose gradients are sparse (torch's SparseAdam takes nothing else)
_SPARSE = frozenset({"sparse_adam"})
FAMILIES = frozenset(_NUMBERS)
# families whose per-param step has no scalar state to update: their large params run
# piece by piece (see _chunks); NAdam's and ASGD's steps split theirs (_large_in_pieces)
_CHUNKED = frozenset({"rmsprop", "adadelta", "adamax", "radam"})
_UNNUMBERED = frozenset({"rmsprop", "adadelta"})  # steps that do not read torch's step number
# elements per piece: a piece's few tensors stay in the last-level cache (4 MiB each in
# float32). ResNet-50's params, RMSprop with momentum: 53 ms a step; 60 with 1 << 18, 56 whole
CHUNK = 1 << 20
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class Scratch:
    """What an eager engine keeps between in-place steps: scratch buffers, and the
    functional state's leaves per param (looked up once per state object).

    Buffers are flat, one per (slot, dtype, device), grown to the largest param that used
    them; :meth:`buffer` views one with a tensor's size and strides (contiguous strides
    if that tensor does not cover its memory densely), as torch's ``empty_like`` would.

    Example:
      >>> import torch
      >>> from adapters.eager_steps import Scratch
      >>> scratch = Scratch()
      >>> a = scratch.buffer(0, torch.ones(2, 3).t())
      >>> a.shape, a.stride()
      (torch.Size([3, 2]), (1, 3))
      >>> scratch.buffer(0, torch.ones(4)).data_ptr() == a.data_ptr()  # the same memory
      True
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple, torch.Tensor] = {}
        self._views: dict[tuple, torch.Tensor] = {}  # made once per layout: a view costs a few us
        self._state: Any = None
        self._entries: list[Entry] = []

    def buffer(self, slot: int, like: torch.Tensor) -> torch.Tensor:
        """Scratch memory shaped and laid out like ``like`` (contents undefined).

        Args:
          slot: which buffer (two tensors needed at once take different slots).
          like: the tensor whose size, strides, dtype and device the view takes.
        """
        view_key = (slot, like.shape, like.stride(), like.dtype, like.device)
        view = self._views.get(view_key)
        if view is not None:
            return view
        key = (slot, like.dtype, like.device)
        flat = self._buffers.get(key)
        if flat is None or flat.numel() < like.numel():
            flat = self._buffers[key] = torch.empty(like.numel(), dtype=like.dtype, device=like.device)
            self._views = {k: v for k, v in self._views.items() if k[0] != slot or k[3:] != key[1:]}
        if not like.is_contiguous() and _dense(like):
            view = flat.as_strided(like.shape, like.stride())
        else:
            view = flat[:like.numel()].view(like.shape)
        self._views[view_key] = view
        return view

    def entries(self, state: Any, num_params: int) -> list[Entry]:
        """The state's leaves per param by name (``state_io.per_param``), cached while the
        group keeps the same state object (in-place steps keep it; anything else, a
        functional step, a load or a rebuild, makes a new one)."""
        if state is not self._state or len(self._entries) != num_params:
            self._entries = state_io.per_param(state, num_params)
            self._state = state
        return self._entries


def applies(family: str, group: dict[str, Any], params: list[torch.Tensor], grads: list) -> bool:
    """Whether :func:`step` computes this group's step (see the module docstring).

    Args:
      family: one of :data:`FAMILIES`.
      group: the param group (current hyperparameter values).
      params, grads: the group's params and their gradients (None: no step for that param).
    """
    if torch.compiler.is_compiling():
        return False
    lr = group["lr"]
    if not (isinstance(lr, Real) or (isinstance(lr, torch.Tensor) and lr.numel() == 1)):
        return False
    for name in _NUMBERS[family]:
        value = group[name]
        if not all(isinstance(v, Real) for v in (value if isinstance(value, (tuple, list)) else (value,))):
            return False
    present = False
    layout = torch.sparse_coo if family in _SPARSE else torch.strided
    for p, g in zip(params, grads):
        if g is None:
            continue
        present = True
        if (p.dtype not in _DTYPES or g.dtype != p.dtype or g.device != p.device
                or g.layout != layout or p.layout != torch.strided):
            return False
    # shards (DTensor params or grads): the functional update's dispatch
    return present and not (k.any_dtensor(params) or k.any_dtensor(grads))


def step(family: str, group: dict[str, Any], params: list[torch.Tensor], grads: list, state: Any,
         scratch: Scratch) -> None:
    """One step of the params with a gradient, in place on ``params`` and on the leaves of
    the functional ``state`` (its counters included), as torch's for-loop computes it.

    Args:
      family: one of :data:`FAMILIES` (:func:`applies` must hold).
      group: the param group (validated values).
      params, grads: the group's params and gradients (None: that param is skipped).
      state: the group's functional state (per-param leaves).
      scratch: the engine's :class:`Scratch`.
    """
    entries = scratch.entries(state, len(params))
    lr = group["lr"]
    if isinstance(lr, torch.Tensor) and lr.dim() != 0:
        lr = lr.squeeze()  # torch's loop computes with the 0-d tensor itself
    one_param, counter_names = _STEPS[family], _counters(family, group)
    chunked, numbered = family in _CHUNKED, family not in _UNNUMBERED
    counters = []
    for p, g, entry in zip(params, grads, entries):
        if g is None:
            continue
        # torch's step: the count after this update (a host read, only where it is used)
        step_number = int(entry[counter_names[0]]) + 1 if numbered else 0
        for part_p, part_g, part_entry in _chunks(p, g, entry) if chunked else [(p, g, entry)]:
            one_param(group, lr, part_p, part_g, part_entry, scratch, step_number)
        counters += [entry[name] for name in counter_names]
    increment(counters, donate=True)


def _chunks(p: torch.Tensor, g: torch.Tensor, entry: Entry) -> list[tuple[torch.Tensor, torch.Tensor, Entry]]:
    """``p``, ``g`` and ``p``-shaped state split into consecutive pieces of :data:`CHUNK`
    elements when ``p`` has at least ``2 * CHUNK`` (see :func:`_large_in_pieces`): the
    whole op sequence runs on one piece while it is in cache, instead of each op streaming
    the whole param from memory. Elementwise math per element is the same (pieces start at
    multiples of every vector width), so the bits are too."""
    names = [n for n, t in entry.items() if t.shape == p.shape]
    return [(part_p, part_g, {**entry, **dict(zip(names, parts))})
            for part_p, part_g, *parts in _large_in_pieces(p, g, *(entry[n] for n in names))]


def _pieces(*tensors: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """Same-shaped tensors as consecutive pieces of :data:`CHUNK` elements (see
    :func:`_chunks`), or whole when they are not all contiguous."""
    if not all(t.is_contiguous() for t in tensors):
        return [tensors]
    return list(zip(*(t.view(-1).split(CHUNK) for t in tensors)))


def _large_in_pieces(p: torch.Tensor, *like_p: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """:func:`_pieces` of ``p`` and its same-shaped tensors if ``p`` has at least
    ``2 * CHUNK`` elements, else them whole. NAdam's and ASGD's steps call it themselves:
    they also update per-param scalars, once per param, not once per piece."""
    return _pieces(p, *like_p) if p.numel() >= 2 * CHUNK else [(p, *like_p)]


def _counters(family: str, group: dict[str, Any]) -> list[str]:
    """The names of the int32 update counters a step of ``family`` advances."""
    names = [_COUNT[family]]
    if family == "rmsprop" and group["momentum"] > 0:
        names.append("TraceState.count")  # the momentum trace's own counter
    return names


# -- shared parts -------------------------------------------------------------------


def _grad(group: dict[str, Any], p: torch.Tensor, g: torch.Tensor, scratch: Scratch,
          coupled_decay: bool = True) -> torch.Tensor:
    """``-g`` if maximizing, plus ``weight_decay * p`` (coupled decay): torch's new
    tensors, in scratch slot 0; ``g`` itself when neither applies (never written)."""
    weight_decay = group["weight_decay"] if coupled_decay else 0
    if group["maximize"]:
        out = torch.neg(g, out=scratch.buffer(0, g))
        return out.add_(p, alpha=weight_decay) if weight_decay != 0 else out
    if weight_decay != 0:
        return torch.add(g, p, alpha=weight_decay, out=scratch.buffer(0, g))
    return g


def _set(t: torch.Tensor, value: Any) -> None:
    """``t = value`` for a 0-d state tensor (torch's ``t.copy_(torch.as_tensor(value))``)."""
    if isinstance(value, torch.Tensor):
        t.copy_(value)
    else:
        t.fill_(value)


# -- one function per algorithm: one param's step, in torch's order --------------------


def _adam(group: dict[str, Any], lr: Any, p: torch.Tensor, g: torch.Tensor, entry: Entry,
          scratch: Scratch, step: int) -> None:
    beta1, beta2 = group["betas"]
    weight_decay, decoupled = group["weight_decay"], group.get("decoupled_weight_decay", False)
    g = _grad(group, p, g, scratch, coupled_decay=not decoupled)
    if weight_decay != 0 and decoupled:
        p.mul_(1 - lr * weight_decay)
    exp_avg, exp_avg_sq = entry["ScaleByAdamState.mu"], entry["ScaleByAdamState.nu"]
    exp_avg.lerp_(g, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    step_size = lr / (1 - beta1 ** step)
    bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
    if group["amsgrad"]:
        torch.maximum(entry["ScaleByAdamState.nu_max"], exp_avg_sq, out=entry["ScaleByAdamState.nu_max"])
        exp_avg_sq = entry["ScaleByAdamState.nu_max"]
    denom = torch.sqrt(exp_avg_sq, out=scratch.buffer(1, exp_avg_sq))
    denom.div_(bias_correction2_sqrt).add_(group["eps"])
    p.addcdiv_(exp_avg, denom, value=-step_size)


def _sparse_adam(group: dict[str, Any], lr: Any, p: torch.Tensor, g: torch.Tensor, entry: Entry,
                 scratch: Scratch, step: int) -> None:
    beta1, beta2 = group["betas"]
    g = (-g if group["maximize"] else g).coalesce()  # unique indices: the update is not linear
    indices, values = g._indices(), g._values()
    if values.numel() == 0:
        return

    def sparse(v: torch.Tensor) -> torch.Tensor:
        return torch.sparse_coo_tensor(indices, v, g.size(), check_invariants=False)

    exp_avg, exp_avg_sq = entry["ScaleBySparseAdamState.mu"], entry["ScaleBySparseAdamState.nu"]
    # old + (1 - b) * (new - old) on the rows present, as torch's sparse updates
    old_avg = exp_avg.sparse_mask(g)._values()
    avg_update = values.sub(old_avg).mul_(1 - beta1)
    exp_avg.add_(sparse(avg_update))
    old_sq = exp_avg_sq.sparse_mask(g)._values()
    sq_update = values.pow(2).sub_(old_sq).mul_(1 - beta2)
    exp_avg_sq.add_(sparse(sq_update))
    numer = avg_update.add_(old_avg)
    denom = sq_update.add_(old_sq).sqrt_().add_(group["eps"])
    step_size = lr * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
    p.add_(sparse(-step_size * numer.div_(denom)))


def _muon(group: dict[str, Any], lr: Any, p: torch.Tensor, g: torch.Tensor, entry: Entry,
          scratch: Scratch, step: int) -> None:
    momentum = group["momentum"]
    buf = entry["EmaState.ema"]
    buf.lerp_(g, 1 - momentum)
    update = torch.lerp(g, buf, momentum, out=scratch.buffer(0, g)) if group["nesterov"] else buf
    update = newton_schulz(update, group["ns_coefficients"], group["ns_steps"], group["eps"], torch.bfloat16)
    adjusted_lr = lr * shape_lr_ratio(p.shape, group["adjust_lr_fn"])
    p.mul_(1 - lr * group["weight_decay"])
    p.add_(update, alpha=-adjusted_lr)


def _rmsprop(group: dict[str, Any], lr: Any, p: torch.Tensor, g: torch.Tensor, entry: Entry,
             scratch: Scratch, step: int) -> None:
    alpha, eps, momentum = group["alpha"], group["eps"], group["momentum"]
    g = _grad(group, p, g, scratch)
    square_avg = entry["ScaleByRmsState.nu"]
    square_avg.mul_(alpha).addcmul_(g, g, value=1 - alpha)
    avg = scratch.buffer(1, square_avg)
    if group["centered"]:
        grad_avg = entry["ScaleByRmsState.mu"]
        grad_avg.lerp_(g, 1 - alpha)
        torch.addcmul(square_avg, grad_avg, grad_avg, value=-1, out=avg).sqrt_()
    else:
        torch.sqrt(square_avg, out=avg)
    avg.add_(eps)
    if momentum > 0:
        buf = entry["TraceState.trace"]
        buf.mul_(momentum).addcdiv_(g, avg)
        p.add_(buf, alpha=-lr)
    else:
        p.addcdiv_(g, avg, value=-lr)  # the division goes into the param update


def _adadelta(group: dict[str, Any], lr: Any, p: torch.Tensor, g: torch.Tensor, entry: Entry,
              scratch: Scratch, step: int) -> None:
    rho, eps = group["rho"], group["eps"]
    g = _grad(group, p, g, scratch)
    square_avg, acc_delta = entry["ScaleByAdaDeltaState.e_g"], entry["ScaleByAdaDeltaState.e_x"]
    square_avg.mul_(rho).addcmul_(g, g, value=1 - rho)
    std = torch.add(square_avg, eps, out=scratch.buffer(1, square_avg)).sqrt_()
    delta = torch.add(acc_delta, eps, out=scratch.buffer(2, acc_delta)).sqrt_()
    delta.div_(std).mul_(g)
    acc_delta.mul_(rho).addcmul_(delta, delta, value=1 - rho)
    p.add_(delta, alpha=-lr)


def _adamax(group: dict[str, Any], lr: Any, p: torch.Tensor, g: torch.Tensor, entry: Entry,
            scratch: Scratch, step: int) -> None:
    beta1, beta2 = group["betas"]
    g = _grad(group, p, g, scratch)
    exp_avg, exp_inf = entry["ScaleByAdamaxState.mu"], entry["ScaleByAdamaxState.nu"]
    exp_avg.lerp_(g, 1 - beta1)
    bound = torch.abs(g, out=scratch.buffer(1, g)).add_(group["eps"])
    torch.maximum(exp_inf.mul_(beta2), bound, out=exp_inf)
    clr = lr / (1 - beta1 ** step)
    p.addcdiv_(exp_avg, exp_inf, value=-clr)


def _nadam(group: dict[str, Any], lr: Any, p: torch.Tensor, g: torch.Tensor, entry: Entry,
           scratch: Scratch, step: int) -> None:
    beta1, beta2 = group["betas"]
    weight_decay, momentum_decay = group["weight_decay"], group["momentum_decay"]
    decoupled = group["decoupled_weight_decay"]
    bias_correction2 = 1 - beta2 ** step
    mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))
    mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * momentum_decay)))
    mu_product = entry["ScaleByNadamState.mu_product"]
    product = mu_product.mul_(mu).item()
    product_next = product * mu_next
    exp_avg, exp_avg_sq = entry["ScaleByNadamState.mu"], entry["ScaleByNadamState.nu"]
    # a large param in pieces, its scalars updated once (see _chunks)
    for p, g, exp_avg, exp_avg_sq in _large_in_pieces(p, g, exp_avg, exp_avg_sq):
        g = _grad(group, p, g, scratch, coupled_decay=not decoupled)
        if weight_decay != 0 and decoupled:
            p.mul_(1 - lr * weight_decay)
        exp_avg.lerp_(g, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = torch.div(exp_avg_sq, bias_correction2, out=scratch.buffer(1, exp_avg_sq)).sqrt_()
        denom.add_(group["eps"])
        p.addcdiv_(g, denom, value=(-lr * (1.0 - mu) / (1.0 - product)))
        p.addcdiv_(exp_avg, denom, value=(-lr * mu_next) / (1.0 - product_next))


def _radam(group: dict[str, Any], lr: Any, p: torch.Tensor, g: torch.Tensor, entry: Entry,
           scratch: Scratch, step: int) -> None:
    beta1, beta2 = group["betas"]
    weight_decay, decoupled = group["weight_decay"], group["decoupled_weight_decay"]
    g = _grad(group, p, g, scratch, coupled_decay=not decoupled)
    if weight_decay != 0 and decoupled:
        p.mul_(1 - lr * weight_decay)
    exp_avg, exp_avg_sq = entry["ScaleByAdamState.mu"], entry["ScaleByAdamState.nu"]
    exp_avg.lerp_(g, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    bias_correction1, bias_correction2 = 1 - beta1 ** step, 1 - beta2 ** step
    update = torch.div(exp_avg, bias_correction1, out=scratch.buffer(1, exp_avg)).mul_(lr)
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * (beta2 ** step) / bias_correction2
    if rho_t > 5.0:
        rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
        # torch's float / tensor is reciprocal(tensor) * float
        adaptive = torch.sqrt(exp_avg_sq, out=scratch.buffer(2, exp_avg_sq)).add_(group["eps"]).reciprocal_()
        update.mul_(adaptive.mul_(bias_correction2 ** 0.5)).mul_(rect)
    p.add_(update, alpha=-1.0)


def _asgd(group: dict[str, Any], lr: Any, p: torch.Tensor, g: torch.Tensor, entry: Entry,
          scratch: Scratch, step: int) -> None:
    lambd, alpha, t0 = group["lambd"], group["alpha"], group["t0"]
    eta, mu, ax = entry["ScaleByAsgdState.eta"], entry["ScaleByAsgdState.mu"], entry["ScaleByAsgdState.ax"]
    if step == 1:
        _set(eta, lr)  # torch makes eta from the lr of a param's first step
    eta_value, averaging = eta.item(), mu.item() != 1
    # a large param in pieces, its scalars read and updated once (see _chunks)
    for part_p, part_g, part_ax in _large_in_pieces(p, g, ax):
        part_g = _grad(group, part_p, part_g, scratch)
        part_p.mul_(1 - lambd * eta_value)
        part_p.add_(part_g, alpha=-eta_value)
        if averaging:
            # slot 0 (the decayed gradient, if any) is free again
            part_ax.add_(torch.sub(part_p, part_ax, out=scratch.buffer(0, part_p)).mul_(mu))
        else:
            part_ax.copy_(part_p)
    _set(eta, lr / ((1 + lambd * lr * step) ** alpha))
    _set(mu, 1 / max(1, step - t0))


_COUNT = {"adam": "ScaleByAdamState.count", "sparse_adam": "ScaleBySparseAdamState.count",
          "muon": "EmaState.count", "rmsprop": "ScaleByRmsState.count", "adadelta": "ScaleByAdaDeltaState.count",
          "adamax": "ScaleByAdamaxState.count", "nadam": "ScaleByNadamState.count",
          "radam": "ScaleByAdamState.count", "asgd": "ScaleByAsgdState.count"}
_STEPS = {"adam": _adam, "sparse_adam": _sparse_adam, "muon": _muon, "rmsprop": _rmsprop, "adadelta": _adadelta,
          "adamax": _adamax, "nadam": _nadam, "radam": _radam, "asgd": _asgd}
