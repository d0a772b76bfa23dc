"""Eager steps dispatched to torch's fused kernels, where a drop-in's algorithm is exactly theirs.

``torch._fused_adam_``, ``torch._fused_adamw_``, ``torch._fused_sgd_`` and
``torch._fused_adagrad_`` (CPU and CUDA) update params and optimizer state in one pass
over memory, where the functional update takes several. A drop-in ``Adam``/``AdamW``/
``SGD``/``Adagrad`` step runs them on its own state tensors (the functional state's
leaves, updated in place), so state_dicts, rebuilds and the compiled engine see the same
state. They agree with the functional update to rounding (``tests/test_adapter_fused.py``
measures it).

The dispatch applies only when nothing it does not cover is asked for: every present
gradient dense, params real floating point of one device and dtype, hyperparameters plain
numbers (lr a number or a one-element tensor; for Adam/AdamW a tensor lr only with
``fused=True``, as torch's default loop computes with it otherwise), for SGD no dampening with momentum (torch's
kernel takes one first-step flag for all params; without dampening the first step needs
none), and no trace by a user's ``torch.compile``. Otherwise, or with ``fused=False``, the
step runs the functional update.

The drop-ins torch has no fused kernel for run their eager steps elsewhere: RMSprop,
Adadelta, Adamax, NAdam, RAdam, ASGD and SparseAdam as torch's for-loop in place
(``adapters.eager_steps``); Rprop, and every chain, as the functional update.

The CPU kernels walk each param's memory in order and index its gradient and state at
the same offsets, so a param whose gradient or state is laid out differently (a
transposed param with a contiguous gradient) runs on contiguous copies, written back.
"""

from __future__ import annotations

from numbers import Real
from typing import Any

import torch

from functional_optim.steps import increment


FAMILIES = frozenset({"adam", "sgd", "adagrad"})
_KERNELS = {"adam": "_fused_adam_", "adamw": "_fused_adamw_"}
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_PREFIX = "ScaleByAdamState."
_RSS = "ScaleByRssState."  # Adagrad's state (fo.scale_by_rss)


def applies(family: str, group: dict[str, Any], params: list[torch.Tensor], grads: list) -> bool:
    """Whether the fused kernel computes this group's step (see the module docstring)."""
    if family not in FAMILIES or group.get("fused") is False or torch.compiler.is_compiling():
        return False
    if family == "adam" and isinstance(group["lr"], torch.Tensor) and group.get("fused") is not True:
        return False  # torch's default loop rounds the step size in the lr's dtype (adapters.eager_steps)
    present = [(p, g) for p, g in zip(params, grads) if g is not None]
    if not present:
        return False
    first = present[0][0]
    if first.device.type not in ("cpu", "cuda") or first.dtype not in _DTYPES:
        return False
    if any(p.dtype != first.dtype or p.device != first.device or g.is_sparse or g.dtype != p.dtype
           for p, g in present):
        return False
    if family == "sgd":
        numbers = [group["momentum"], group["dampening"], group["weight_decay"]]
    elif family == "adagrad":
        numbers = [group["lr_decay"], group["eps"], group["weight_decay"]]
    else:
        numbers = [*group["betas"], group["eps"], group["weight_decay"]]
    lr = group["lr"]
    if not (all(isinstance(v, Real) for v in numbers)
            and (isinstance(lr, Real) or (isinstance(lr, torch.Tensor) and lr.numel() == 1))):
        return False
    return family != "sgd" or group["momentum"] == 0 or group["dampening"] == 0


def step(family: str, group: dict[str, Any], params: list[torch.Tensor], grads: list,
         entries: list[dict[str, Any]]) -> None:
    """One fused step of the present params (``family`` "adam", "sgd" or "adagrad"), in
    place on ``params`` and on the functional state's leaves per param (``entries``:
    ``state_io.per_param`` of the state)."""
    present = [i for i, g in enumerate(grads) if g is not None]
    if family == "sgd":
        return _sgd(group, params, grads, entries, present)
    if family == "adagrad":
        return _adagrad(group, params, grads, entries, present)
    kind = "adamw" if group.get("decoupled_weight_decay") else "adam"
    counts = [entries[i][_PREFIX + "count"] for i in present]
    amsgrad = bool(group["amsgrad"])
    # torch's fused kernels read the already-incremented step as a float tensor
    steps = _next_steps(counts)
    lr = _lr(group, params[present[0]])
    beta1, beta2 = group["betas"]
    names = ["mu", "nu", "nu_max"] if amsgrad else ["mu", "nu"]
    ps, gs, (mus, nus, *maxes), back = _in_step(
        params, grads, present, [[entries[i][_PREFIX + n] for i in present] for n in names])
    getattr(torch, _KERNELS[kind])(
        ps, gs, mus, nus, maxes[0] if amsgrad else [], steps,
        lr=lr, beta1=float(beta1), beta2=float(beta2), weight_decay=float(group["weight_decay"]),
        eps=float(group["eps"]), amsgrad=amsgrad, maximize=bool(group["maximize"]))
    _write_back(back)
    increment(counts, donate=True)


def _sgd(group: dict[str, Any], params: list[torch.Tensor], grads: list, entries: list, present: list) -> None:
    with_momentum = group["momentum"] != 0
    counts = [entries[i]["TraceState.count"] for i in present] if with_momentum else []
    ps, gs, bufs, back = _in_step(
        params, grads, present, [[entries[i]["TraceState.trace"] for i in present]] if with_momentum else [])
    torch._fused_sgd_(
        ps, gs, bufs[0] if with_momentum else [],
        weight_decay=float(group["weight_decay"]), momentum=float(group["momentum"]),
        lr=_lr(group, params[present[0]]), dampening=float(group["dampening"]),
        nesterov=bool(group["nesterov"]), maximize=bool(group["maximize"]),
        # the buffer starts at zero, so without dampening its first update is already g
        is_first_step=False)
    _write_back(back)
    if counts:
        increment(counts, donate=True)


def _adagrad(group: dict[str, Any], params: list[torch.Tensor], grads: list, entries: list, present: list) -> None:
    counts = [entries[i][_RSS + "count"] for i in present]
    # torch's kernel reads the already-incremented step as a float32 tensor
    steps = _next_steps(counts)
    ps, gs, (sums,), back = _in_step(params, grads, present, [[entries[i][_RSS + "sum_of_squares"] for i in present]])
    torch._fused_adagrad_(
        ps, gs, sums, steps, lr=_lr(group, params[present[0]]), lr_decay=float(group["lr_decay"]),
        weight_decay=float(group["weight_decay"]), eps=float(group["eps"]), maximize=bool(group["maximize"]))
    _write_back(back)
    increment(counts, donate=True)


def _next_steps(counts: list[torch.Tensor]) -> list[torch.Tensor]:
    """The step each kernel reads: the counts plus one, as float32 0-d tensors (views of one
    vector: a handful of ops whatever the number of params)."""
    return list(torch.stack(counts).add_(1).to(torch.float32).unbind())


def _in_step(params: list[torch.Tensor], grads: list, present: list, states: list[list[torch.Tensor]]
             ) -> tuple[list, list, list[list], list]:
    """The kernel's param, grad and state lists for the ``present`` params, and the
    (original, copy) pairs to write back after it ran.

    A param whose gradient and state share its memory layout (contiguous, channels-last,
    ...) is passed as is; otherwise (the kernels would pair elements by memory offset)
    it runs on contiguous copies.
    """
    ps, gs = [params[i] for i in present], [grads[i] for i in present]
    states = [list(s) for s in states]
    back: list[tuple[torch.Tensor, torch.Tensor]] = []
    for j, (p, g) in enumerate(zip(ps, gs)):
        if p.is_contiguous() and g.is_contiguous() and all(s[j].is_contiguous() for s in states):
            continue
        if _dense(p) and g.stride() == p.stride() and all(s[j].stride() == p.stride() for s in states):
            continue
        ps[j] = _copy_for(p, back)
        gs[j] = g.contiguous()
        for s in states:
            s[j] = _copy_for(s[j], back)
    return ps, gs, states, back


def _copy_for(t: torch.Tensor, back: list) -> torch.Tensor:
    if t.is_contiguous():
        return t
    copy = t.contiguous()
    back.append((t, copy))
    return copy


def _write_back(back: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for original, copy in back:
        original.copy_(copy)


def _dense(t: torch.Tensor) -> bool:
    """Whether ``t`` covers a block of memory without gaps or overlaps, in some dim order."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda pair: pair[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


def _lr(group: dict[str, Any], like: torch.Tensor) -> Any:
    lr = group["lr"]
    return lr.reshape(()).to(device=like.device) if isinstance(lr, torch.Tensor) else float(lr)
