"""Optimizer step speed: functional_optim's adapter against torch.optim, timed round-robin in one run.

For every torch-named drop-in (Adam, AdamW, SGD with momentum, Adagrad, RMSprop plain, with
momentum and centered, Adadelta, Adamax, NAdam, RAdam, ASGD, Rprop) and a clipped AdamW
chain, on (a) one 10M-element tensor ("big") and (b) the 161 parameter shapes of ResNet-50
(25.6M elements, "resnet50"), the step time of:

  torch for-loop   torch.optim with foreach=False
  torch foreach    foreach=True
  torch fused      fused=True (Adam, AdamW, SGD, Adagrad: the CPU fused kernels; "-" otherwise)
  torch compiled   torch.compile(opt.step), torch's default implementation flags
  ours eager       the adapters' drop-in (FunctionalOptimizer, compile=False: what users get)
  ours compiled    the same with compile=True (flat buffers, one graph per step)
  triad            in-place torch.add(b, c, alpha=s, out=a) over the same number of elements

``clip`` is ``fo.chain(fo.clip_by_global_norm(1.0), fo.scale_by_adam(),
fo.add_decayed_weights(1e-2), fo.scale_by_learning_rate(lr))`` given to
``FunctionalOptimizer`` as a factory (``lr``, ``max_norm``, ``weight_decay`` live in the
group); its torch counterparts are ``clip_grad_norm_(params, 1.0)`` (foreach=False for the
for-loop row, foreach=True otherwise) followed by torch AdamW's step, and ``torch.compile``
of a function doing both. The clip table also times torch fused Adam without clipping
("torch fused adam (no clip)"), the reference of the summary's clip ratio.

Method (the machine's memory bandwidth drifts 10-30% between runs): per (set, optimizer)
every variant is built first on its own copy of the same params and grads, called once
(for compiled variants that call is the cold compile, reported as wall time, "cold s",
and as CPU time of this process plus its children, the C++ compiler, "cpu s": on a shared
machine the wall time also counts other processes' load; inductor's on-disk caches are
disabled so it is really cold, and inductor is warmed up on a tiny graph beforehand so
the first table does not pay its imports) and warmed up; then the variants are timed
round-robin: each of ``--rounds`` rounds runs every variant ``--iters`` steps (the start
of the round rotates), and a variant's time is the median over rounds of the mean time per
step. All ratios in a table come from the same rounds, so drift hits every variant alike.
GB/s counts the bytes an ideal fp32 kernel must move per element (Adam/AdamW 28: read p,
g, m, v, write p, m, v; likewise 28 for every optimizer with two state tensors: RMSprop
with momentum or centered, Adadelta, Adamax, NAdam, RAdam, Rprop; SGD momentum, Adagrad,
RMSprop 20; ASGD 16: read p, g, write p and its average, which is a copy until step t0;
clip 32: Adam's 28 plus reading g once more for the norm) and "% triad" compares it with
the triad of the same rounds, counted at the 16 B/element it really moves (reads b and c, writes a, and reads a's cache
lines before writing them: write-allocate; an optimizer's writes go to lines it has just
read, so its ideal bytes need no such term). Ratios "ours eager / this" and "ours
compiled / this" are time ratios: below 1, ours is faster than that row.

Usage:
  python benchmarks/bench_step.py                         # everything (~40 min here; torch's compile of its own step takes 1-2 min per optimizer on resnet50)
  python benchmarks/bench_step.py --quick                 # small sizes, CI smoke
  python benchmarks/bench_step.py --optimizers adam clip --sets big --rounds 9
  python benchmarks/bench_step.py --skip 'torch compiled' --json step.json
  python benchmarks/bench_step.py --optimizers rmsprop asgd --skip 'torch compiled' 'ours compiled' --threads 1
  python benchmarks/bench_step.py --optimizers clip adam --startup   # + first step in fresh processes
  python benchmarks/bench_step.py --quick --optimizers timm_lamb timm_rmsproptf   # timm's classes
  python benchmarks/bench_step.py --optimizers timm_lamb timm_lars timm_nvnovograd timm_adabelief \
      timm_rmsproptf timm_madgrad --sets resnet50          # issue 11's targets

timm's optimizers (``--optimizers timm_lamb timm_lars ...``, one choice per class of
``adapters.timm`` but Adahessian, see below): per (set, optimizer) the variants

  timm             timm's own class (``timm.optim.<Class>``, default flags: on CPU timm picks
                   its for-loop implementation, ``foreach=None`` resolves to False there)
  timm foreach     the same with foreach=True (AdaBelief, AdamWLegacy, RMSpropTF, Lamb, Lars;
                   "-" for the classes without a foreach implementation)
  ours eager       ``adapters.timm.<Class>`` (the drop-in for timm's class)
  ours compiled    ``FunctionalOptimizer(params, fo.timm.<name>, compile=True, ...)``, the same
                   hyperparameters (``TIMM_SPECS``: timm's defaults, plus momentum 0.9 for
                   Lars, SGDP and RMSpropTF, and weight decay for a few)
  triad            as above

timm is an optional benchmark dependency (``pip install timm==1.0.31``), imported only by
``benchmarks/timm_reference.py`` through ``tests/reference/timm_shim.py`` (timm imports
torchvision, which has no build for this torch), and only when a ``timm_*`` choice runs;
without it the timm rows read "-" with the reason in their note (``BENCH_STEP_NO_TIMM=1``
simulates that). Their ideal traffic counts one pass: read p, g and every per-element state
tensor, write p and the states (AdaBelief, AdamP, AdamWLegacy, NAdamLegacy, RAdamLegacy,
RMSpropTF with momentum 28; SGDP, Lars with momentum, NvNovoGrad 20, its second moment is
one scalar per tensor; MADGRAD 32: it also reads x0; Lamb 32: 28 plus reading g for the
global norm, as clip; Adafactor 12 plus 8 per element of the tensors it does not factor);
the extra reads of layer-wise norms and projections are not counted, so GB/s is a floor.
The summary gives, per timm choice, ours compiled / timm, ours eager / timm (and the same
against timm foreach), the cold compile of ours compiled (wall and CPU seconds), and on the
full resnet50 set the issue 11 check for Lamb, Lars, NvNovoGrad, AdaBelief, RMSpropTF and
MADGRAD: cold compile <= 5 s wall, and ours compiled at least 3x faster than the faster of
timm's two variants (compiled / timm <= 1/3).

``--startup`` also times what a user's script meets: the first step of ``ours compiled``
in a fresh Python process (own imports, inductor's one-time setup included), once with an
empty inductor cache directory (cold start) and once more in a new process with the cache
the first one filled (warm start: the FX graph and AOT autograd caches skip inductor's
code generation and the C++ compile; dynamo still traces the step).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import inspect
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

import adapters.timm as timm_adapters  # our engine under timm's names (timm itself is not imported)
import functional_optim as fo
from adapters import (ASGD, SGD, Adadelta, Adagrad, Adam, Adamax, AdamW, FunctionalOptimizer, NAdam, RAdam,
                      RMSprop, Rprop)

HERE = Path(__file__).resolve().parent
SHAPES_FILE = HERE / "data" / "resnet50_shapes.json"  # torchvision resnet50, named_parameters() order

MAX_NORM = 1.0
TRIAD = "triad"
TRIAD_BYTES = 16  # per element: read b, c; write a, plus the write-allocate read of a
CLIP_REF = "torch fused adam (no clip)"
VARIANTS = ["torch for-loop", "torch foreach", "torch fused", "torch compiled", "ours eager", "ours compiled"]
COMPILED = {"torch compiled", "ours compiled"}


def clip_adamw(lr: float = 1e-3, max_norm: float = MAX_NORM, weight_decay: float = 1e-2) -> fo.GradientTransformation:
    """Global-norm clipping, then AdamW (decoupled weight decay), as one chain."""
    return fo.chain(fo.clip_by_global_norm(max_norm), fo.scale_by_adam(),
                    fo.add_decayed_weights(weight_decay), fo.scale_by_learning_rate(lr))


@dataclass
class Spec:
    bytes_per_element: int
    kwargs: dict[str, Any]
    torch_cls: type
    ours: Callable[..., torch.optim.Optimizer]  # ours(params, compile=...) -> optimizer
    fused: bool  # torch has fused=True on CPU
    clip: bool = False


SPECS: dict[str, Spec] = {
    "adam": Spec(28, dict(lr=1e-3), torch.optim.Adam, lambda p, **c: Adam(p, lr=1e-3, **c), True),
    "adamw": Spec(28, dict(lr=1e-3, weight_decay=1e-2), torch.optim.AdamW,
                  lambda p, **c: AdamW(p, lr=1e-3, weight_decay=1e-2, **c), True),
    "sgd": Spec(20, dict(lr=1e-2, momentum=0.9), torch.optim.SGD,
                lambda p, **c: SGD(p, lr=1e-2, momentum=0.9, **c), True),
    "adagrad": Spec(20, dict(lr=1e-2), torch.optim.Adagrad, lambda p, **c: Adagrad(p, lr=1e-2, **c), True),
    "rmsprop": Spec(20, dict(lr=1e-2), torch.optim.RMSprop, lambda p, **c: RMSprop(p, lr=1e-2, **c), False),
    "rmsprop_momentum": Spec(28, dict(lr=1e-2, momentum=0.9), torch.optim.RMSprop,
                             lambda p, **c: RMSprop(p, lr=1e-2, momentum=0.9, **c), False),
    "rmsprop_centered": Spec(28, dict(lr=1e-2, centered=True), torch.optim.RMSprop,
                             lambda p, **c: RMSprop(p, lr=1e-2, centered=True, **c), False),
    "adadelta": Spec(28, dict(lr=1.0), torch.optim.Adadelta, lambda p, **c: Adadelta(p, lr=1.0, **c), False),
    "adamax": Spec(28, dict(lr=2e-3), torch.optim.Adamax, lambda p, **c: Adamax(p, lr=2e-3, **c), False),
    "nadam": Spec(28, dict(lr=2e-3), torch.optim.NAdam, lambda p, **c: NAdam(p, lr=2e-3, **c), False),
    "radam": Spec(28, dict(lr=1e-3), torch.optim.RAdam, lambda p, **c: RAdam(p, lr=1e-3, **c), False),
    "asgd": Spec(16, dict(lr=1e-2), torch.optim.ASGD, lambda p, **c: ASGD(p, lr=1e-2, **c), False),
    "rprop": Spec(28, dict(lr=1e-2), torch.optim.Rprop, lambda p, **c: Rprop(p, lr=1e-2, **c), False),
    "clip": Spec(32, dict(lr=1e-3, weight_decay=1e-2), torch.optim.AdamW,
                 lambda p, **c: FunctionalOptimizer(p, clip_adamw, lr=1e-3, max_norm=MAX_NORM,
                                                    weight_decay=1e-2, **c), True, clip=True),
}


TIMM = "timm"
TIMM_FOREACH = "timm foreach"
TIMM_VARIANTS = [TIMM, TIMM_FOREACH, "ours eager", "ours compiled"]
# issue 11: compiled, on the full resnet50 set, <= 5 s cold compile and >= 3x faster than timm's class
ISSUE11_COLD_S = 5.0
ISSUE11_SPEEDUP = 3.0


def _adafactor_bytes(shapes: list[list[int]]) -> float:
    """12 B/element (read p, g; write p), plus 8 for the elements of the tensors Adafactor
    keeps a full second moment for (timm's ``_get_options``: the others are factored into a
    row and a column vector, whose traffic is negligible)."""
    def factored(s: list[int]) -> bool:
        return ((len(s) > 2 and s[0] > 16 and s[1] > 16)
                or (len(s) >= 2 and s[-2] > 16 and s[-1] > 16))
    numel = sum(math.prod(s) for s in shapes)
    full = sum(math.prod(s) for s in shapes if not factored(s))
    return round(12 + 8 * full / numel, 1)


@dataclass
class TimmSpec:
    """One of timm's classes: ``adapters.timm.<cls>`` eager, ``fo.timm.<fn>`` compiled,
    ``timm.optim.<cls>`` (optional dependency) as the reference."""
    bytes_per_element: int | Callable[[list[list[int]]], float]
    kwargs: dict[str, Any]
    cls: str  # the class name, in adapters.timm and in timm.optim
    fn: str  # fo.timm.<fn>
    issue11: bool = False  # one of issue 11's six targets

    def ours(self, params: list[torch.nn.Parameter], compile: bool = False) -> torch.optim.Optimizer:
        if compile:
            return FunctionalOptimizer(params, getattr(fo.timm, self.fn), compile=True, **self.kwargs)
        return getattr(timm_adapters, self.cls)(params, **self.kwargs)


# Adahessian is left out: its step needs Hessian-diagonal estimates (Hutchinson hvps from a
# backward with create_graph=True), which a step timed on fixed gradients cannot give.
TIMM_SPECS: dict[str, TimmSpec] = {
    "timm_lamb": TimmSpec(32, dict(lr=1e-3, weight_decay=1e-2), "Lamb", "lamb", issue11=True),
    "timm_lars": TimmSpec(20, dict(lr=1e-1, momentum=0.9, weight_decay=1e-4), "Lars", "lars", issue11=True),
    "timm_nvnovograd": TimmSpec(20, dict(lr=1e-3, weight_decay=1e-2), "NvNovoGrad", "nvnovograd", issue11=True),
    "timm_adabelief": TimmSpec(28, dict(lr=1e-3, weight_decay=1e-2), "AdaBelief", "adabelief", issue11=True),
    "timm_rmsproptf": TimmSpec(28, dict(lr=1e-2, momentum=0.9), "RMSpropTF", "rmsprop_tf", issue11=True),
    "timm_madgrad": TimmSpec(32, dict(lr=1e-2), "MADGRAD", "madgrad", issue11=True),
    "timm_adamp": TimmSpec(28, dict(lr=1e-3, weight_decay=1e-2), "AdamP", "adamp"),
    "timm_sgdp": TimmSpec(20, dict(lr=1e-2, momentum=0.9), "SGDP", "sgdp"),
    "timm_adamwlegacy": TimmSpec(28, dict(lr=1e-3, weight_decay=1e-2), "AdamWLegacy", "adamw_legacy"),
    "timm_nadamlegacy": TimmSpec(28, dict(lr=2e-3), "NAdamLegacy", "nadam_legacy"),
    "timm_radamlegacy": TimmSpec(28, dict(lr=1e-3), "RAdamLegacy", "radam_legacy"),
    "timm_adafactor": TimmSpec(_adafactor_bytes, {}, "Adafactor", "adafactor"),
}


def _spec(name: str) -> Spec | TimmSpec:
    return TIMM_SPECS[name] if name in TIMM_SPECS else SPECS[name]


def bytes_per_element(name: str, shapes: list[list[int]]) -> int | float:
    b = _spec(name).bytes_per_element
    return b(shapes) if callable(b) else b


def _load_timm_reference() -> Any:
    """``benchmarks/timm_reference.py`` (the only place timm is imported), by path: this
    script also runs as a module loaded from its file (the smoke test)."""
    import importlib.util
    mod = sys.modules.get("bench_timm_reference")
    if mod is None:
        spec = importlib.util.spec_from_file_location("bench_timm_reference", HERE / "timm_reference.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------------------------
# Building the variants


def resnet50_shapes() -> list[list[int]]:
    return json.loads(SHAPES_FILE.read_text())["shapes"]


def make_params(shapes: list[list[int]], seed: int = 0) -> list[torch.nn.Parameter]:
    """The same params and grads for every variant (grads stay fixed: no backward is timed)."""
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=gen))
        p.grad = torch.randn(shape, generator=gen)
        params.append(p)
    return params


@dataclass
class Variant:
    label: str
    step: Callable[[], Any] | None  # None: not available (printed as "-")
    compiled: bool = False
    note: str = ""
    keep: Any = None  # keeps the optimizer / tensors alive
    cold_s: float | None = None
    cold_cpu_s: float | None = None  # CPU of this process and its children (the C++ compiler)
    rounds_ms: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.rounds_ms) if self.rounds_ms else None


def build_timm_variants(name: str, shapes: list[list[int]], skip: set[str]) -> list[Variant]:
    spec = TIMM_SPECS[name]
    out: list[Variant] = []
    timm_optim, why = None, ""
    if not {TIMM, TIMM_FOREACH} <= skip:
        timm_optim, why = _load_timm_reference().timm_optim()
    for label in TIMM_VARIANTS:
        if label in skip:
            continue
        if label in (TIMM, TIMM_FOREACH):
            if timm_optim is None:
                out.append(Variant(label, None, note=f"unavailable: {why}"))
                continue
            cls = getattr(timm_optim, spec.cls)
            has_foreach = "foreach" in inspect.signature(cls).parameters
            if label == TIMM_FOREACH and not has_foreach:
                out.append(Variant(label, None, note=f"timm {spec.cls} has no foreach implementation"))
                continue
            flags = dict(foreach=True) if label == TIMM_FOREACH else {}
            opt = cls(make_params(shapes), **spec.kwargs, **flags)
            note = "" if label == TIMM_FOREACH else ("foreach=None: for-loop on CPU" if has_foreach else "for-loop")
            out.append(Variant(label, opt.step, note=note, keep=opt))
        else:
            compiled = label == "ours compiled"
            opt = spec.ours(make_params(shapes), compile=compiled)
            out.append(Variant(label, opt.step, compiled=compiled,
                               note=_engine_note(opt) if compiled else "", keep=opt))
    return out


def _engine_note(opt: torch.optim.Optimizer) -> str:
    """The engine of our compiled step: one graph on flat buffers, or on per-param leaves
    (private attributes; best effort)."""
    try:
        kinds = {g.engine.kind for g in opt._groups}
    except AttributeError:
        return ""
    return {frozenset({"flat"}): "flat buffers", frozenset({"compiled"}): "per-param graph"}.get(
        frozenset(kinds), "/".join(sorted(kinds)))


def build_variants(name: str, shapes: list[list[int]], skip: set[str]) -> list[Variant]:
    if name in TIMM_SPECS:
        return build_timm_variants(name, shapes, skip)
    spec = SPECS[name]
    out: list[Variant] = []

    def torch_step(params, flags, clip_foreach):
        opt = spec.torch_cls(params, **spec.kwargs, **flags)
        if not spec.clip:
            return opt.step, opt
        clip = torch.nn.utils.clip_grad_norm_

        def step():
            clip(params, MAX_NORM, foreach=clip_foreach)
            opt.step()
        return step, opt

    labels = VARIANTS + ([CLIP_REF] if spec.clip else [])
    for label in labels:
        if label in skip:
            continue
        if label == "torch fused" and not spec.fused:
            out.append(Variant(label, None, note=f"torch {spec.torch_cls.__name__} has no fused CPU kernel"))
            continue
        params = make_params(shapes)
        if label == "torch for-loop":
            step, keep = torch_step(params, dict(foreach=False), clip_foreach=False)
            out.append(Variant(label, step, keep=keep))
        elif label == "torch foreach":
            step, keep = torch_step(params, dict(foreach=True), clip_foreach=True)
            out.append(Variant(label, step, keep=keep))
        elif label == "torch fused":
            step, keep = torch_step(params, dict(fused=True), clip_foreach=True)
            out.append(Variant(label, step, keep=keep))
        elif label == "torch compiled":
            opt = spec.torch_cls(params, **spec.kwargs)
            if spec.clip:
                def clipped_step(params=params, opt=opt):
                    torch.nn.utils.clip_grad_norm_(params, MAX_NORM)
                    opt.step()
                step = torch.compile(clipped_step)
            else:
                step = torch.compile(opt.step)
            out.append(Variant(label, step, compiled=True, keep=opt))
        elif label in ("ours eager", "ours compiled"):
            compiled = label == "ours compiled"
            opt = spec.ours(params, compile=compiled)
            out.append(Variant(label, opt.step, compiled=compiled,
                               note=_engine_note(opt) if compiled else "", keep=opt))
        elif label == CLIP_REF:
            opt = torch.optim.Adam(params, lr=1e-3, fused=True)
            out.append(Variant(label, opt.step, keep=opt))
    return out


def build_triad(numel: int) -> Variant:
    a, b, c = torch.randn(numel), torch.randn(numel), torch.randn(numel)
    return Variant(TRIAD, lambda: torch.add(b, c, alpha=0.5, out=a), keep=(a, b, c))


# ---------------------------------------------------------------------------------
# Measurement


def warm_up(variants: list[Variant], warmup: int) -> None:
    """First call (cold compile for compiled variants, timed), then ``warmup`` more calls."""
    for v in variants:
        if v.step is None:
            continue
        start, cpu = time.perf_counter(), _cpu_seconds()
        v.step()
        if v.compiled:
            v.cold_s = time.perf_counter() - start
            v.cold_cpu_s = _cpu_seconds() - cpu
        for _ in range(warmup):
            v.step()


def time_round_robin(variants: list[Variant], rounds: int, iters: int) -> None:
    """Every round runs every variant ``iters`` steps; records the mean ms per step per round."""
    live = [v for v in variants if v.step is not None]
    for r in range(rounds):
        shift = r % len(live)  # rotate who goes first, so no variant always follows the same one
        for v in live[shift:] + live[:shift]:
            step = v.step
            gc.collect()
            start = time.perf_counter()
            for _ in range(iters):
                step()
            v.rounds_ms.append((time.perf_counter() - start) / iters * 1e3)


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (inductor runs the C++
    compiler as a child process, from a thread of this one)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def warm_inductor() -> None:
    """Compile a tiny graph so the first measured cold compile does not pay inductor's imports."""
    x = torch.ones(8)
    torch.compile(lambda t: t.mul(2).add_(1), fullgraph=True)(x)
    torch._dynamo.reset()


def gbps(bytes_per_element: int, numel: int, ms: float | None) -> float | None:
    return None if ms is None else bytes_per_element * numel / (ms * 1e-3) / 1e9


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def measure(name: str, shapes: list[list[int]], rounds: int, iters: int, warmup: int,
            skip: set[str]) -> dict[str, Any]:
    """One table: every variant of one optimizer on one param set, timed round-robin."""
    spec_bytes = bytes_per_element(name, shapes)
    numel = sum(math.prod(s) for s in shapes)
    torch._dynamo.reset()
    variants = build_variants(name, shapes, skip) + [build_triad(numel)]
    warm_up(variants, warmup)
    time_round_robin(variants, rounds, iters)
    by_label = {v.label: v for v in variants}
    triad_gbps = gbps(TRIAD_BYTES, numel, by_label[TRIAD].median_ms)
    eager = by_label.get("ours eager")
    compiled = by_label.get("ours compiled")
    result: dict[str, Any] = {"bytes_per_element": spec_bytes, "triad_gbps": triad_gbps,
                              "variants": {}}
    for v in variants:
        bpe = TRIAD_BYTES if v.label == TRIAD else spec_bytes
        rate = gbps(bpe, numel, v.median_ms)
        result["variants"][v.label] = {
            "median_ms": v.median_ms,
            "rounds": v.rounds_ms,
            "min_ms": min(v.rounds_ms) if v.rounds_ms else None,
            "max_ms": max(v.rounds_ms) if v.rounds_ms else None,
            "cold_s": v.cold_s,
            "cold_cpu_s": v.cold_cpu_s,
            "gbps": rate,
            "pct_triad": None if rate is None or triad_gbps is None else 100 * rate / triad_gbps,
            "ours_eager_over_this": None if v.label == TRIAD else ratio(eager and eager.median_ms, v.median_ms),
            "ours_compiled_over_this": None if v.label == TRIAD else ratio(compiled and compiled.median_ms,
                                                                           v.median_ms),
            "note": v.note,
        }
    del variants, by_label, eager, compiled
    gc.collect()
    torch._dynamo.reset()
    return result


# ---------------------------------------------------------------------------------
# Report


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def print_table(set_name: str, name: str, result: dict[str, Any]) -> None:
    print(f"\n{set_name} / {name}  (ideal traffic {result['bytes_per_element']} B/element; "
          f"triad {_f(result['triad_gbps'], '.1f')} GB/s in the same rounds)")
    print(f"  {'variant':<27} {'median ms':>10} {'min-max ms':>15} {'cold s':>7} {'cpu s':>6} {'GB/s':>6} "
          f"{'% triad':>8} {'eager/this':>11} {'compiled/this':>14}  note")
    for label, r in result["variants"].items():
        spread = "-" if r["min_ms"] is None else f"{r['min_ms']:.2f}-{r['max_ms']:.2f}"
        pct = "-" if r["pct_triad"] is None else f"{r['pct_triad']:.0f}%"
        print(f"  {label:<27} {_f(r['median_ms'], '.2f'):>10} {spread:>15} {_f(r['cold_s'], '.2f'):>7} "
              f"{_f(r.get('cold_cpu_s'), '.2f'):>6} "
              f"{_f(r['gbps'], '.1f'):>6} {pct:>8} {_f(r['ours_eager_over_this'], '.2f'):>11} "
              f"{_f(r['ours_compiled_over_this'], '.2f'):>14}  {r['note']}")


SUMMARY_COLUMNS = [
    ("eager/for-loop", "ours eager", "torch for-loop"),
    ("eager/foreach", "ours eager", "torch foreach"),
    ("eager/fused", "ours eager", "torch fused"),
    ("compiled/fused", "ours compiled", "torch fused"),
    ("torch-compiled/compiled", "torch compiled", "ours compiled"),
]


TIMM_SUMMARY_COLUMNS = [
    ("compiled/timm", "ours compiled", TIMM),
    ("eager/timm", "ours eager", TIMM),
    ("compiled/timm-foreach", "ours compiled", TIMM_FOREACH),
    ("eager/timm-foreach", "ours eager", TIMM_FOREACH),
]


def issue11_check(name: str, set_name: str, quick: bool, ms: dict[str, float | None],
                  cold_s: float | None) -> dict[str, Any] | None:
    """Issue 11's target for one of its six optimizers on the full resnet50 set (None for the
    others, other sets and --quick): cold compile <= 5 s wall, and ours compiled at least 3x
    faster than the faster of timm's variants."""
    if not TIMM_SPECS[name].issue11 or set_name != "resnet50" or quick:
        return None
    timm_ms = [m for m in (ms.get(TIMM), ms.get(TIMM_FOREACH)) if m is not None]
    speedup = ratio(min(timm_ms), ms.get("ours compiled")) if timm_ms else None
    cold_ok = None if cold_s is None else cold_s <= ISSUE11_COLD_S
    speed_ok = None if speedup is None else speedup >= ISSUE11_SPEEDUP
    met = None if cold_ok is None or speed_ok is None else cold_ok and speed_ok
    return {"speedup_over_best_timm": speedup, "cold_ok": cold_ok, "speed_ok": speed_ok, "met": met}


def summarize(results: dict[str, Any], quick: bool = False) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for set_name, per_set in results.items():
        rows: dict[str, Any] = {}
        timm_rows: dict[str, Any] = {}
        for name, result in per_set["optimizers"].items():
            ms = {label: r["median_ms"] for label, r in result["variants"].items()}
            if name in TIMM_SPECS:
                compiled = result["variants"].get("ours compiled", {})
                row = {col: ratio(ms.get(a), ms.get(b)) for col, a, b in TIMM_SUMMARY_COLUMNS}
                row["cold_s"], row["cold_cpu_s"] = compiled.get("cold_s"), compiled.get("cold_cpu_s")
                row["issue11"] = issue11_check(name, set_name, quick, ms, row["cold_s"])
                timm_rows[name] = row
                continue
            rows[name] = {col: ratio(ms.get(a), ms.get(b)) for col, a, b in SUMMARY_COLUMNS}
        clip = per_set["optimizers"].get("clip")
        clip_ratio = None
        if clip is not None:
            ms = {label: r["median_ms"] for label, r in clip["variants"].items()}
            clip_ratio = ratio(ms.get("ours compiled"), ms.get(CLIP_REF))
        summary[set_name] = {"ratios": rows, "clip_compiled_over_torch_fused_adam": clip_ratio}
        if timm_rows:
            summary[set_name]["timm"] = timm_rows
    return summary


def _issue11_cell(check: dict[str, Any] | None, name: str, quick: bool) -> str:
    if not TIMM_SPECS[name].issue11:
        return ""
    if check is None:
        return "n/a (--quick)" if quick else "n/a (resnet50 only)"
    if check["met"] is None:
        return "n/a (a variant is missing)"
    if check["met"]:
        return "met"
    why = ([] if check["cold_ok"] else [f"cold > {ISSUE11_COLD_S:g} s"]) + \
          ([] if check["speed_ok"] else [f"speedup {check['speedup_over_best_timm']:.2f}x < {ISSUE11_SPEEDUP:g}x"])
    return "MISSED: " + ", ".join(why)


def print_summary(summary: dict[str, Any], quick: bool = False) -> None:
    print("\nSummary: time ratios from the same rounds (< 1: the first named is faster; "
          "eager/compiled = ours)")
    for set_name, s in summary.items():
        if s["ratios"] or "timm" not in s:  # the torch choices' table
            width = max([10, len(set_name), *map(len, s["ratios"])])
            print(f"\n  {set_name:<{width}}" + "".join(f"{col:>25}" for col, _, _ in SUMMARY_COLUMNS))
            for name, row in s["ratios"].items():
                print(f"  {name:<{width}}" + "".join(f"{_f(row[col], '.2f'):>25}" for col, _, _ in SUMMARY_COLUMNS))
            print(f"  clip chain compiled / torch fused Adam (no clip): "
                  f"{_f(s['clip_compiled_over_torch_fused_adam'], '.2f')}")
        if "timm" in s:
            print_timm_summary(set_name, s["timm"], quick)


def print_timm_summary(set_name: str, rows: dict[str, Any], quick: bool) -> None:
    width = max([16, len(set_name), *map(len, rows)])
    print(f"\n  {set_name:<{width}}" + "".join(f"{col:>22}" for col, _, _ in TIMM_SUMMARY_COLUMNS)
          + f"{'cold s':>8}{'cpu s':>7}  issue 11 (<= {ISSUE11_COLD_S:g} s cold, >= {ISSUE11_SPEEDUP:g}x "
            f"the faster timm)")
    for name, row in rows.items():
        print(f"  {name:<{width}}" + "".join(f"{_f(row[col], '.2f'):>22}" for col, _, _ in TIMM_SUMMARY_COLUMNS)
              + f"{_f(row['cold_s'], '.2f'):>8}{_f(row['cold_cpu_s'], '.2f'):>7}  "
              + _issue11_cell(row["issue11"], name, quick))


def _git_commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty else "")


def _finite_or_null(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite_or_null(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite_or_null(v) for v in x]
    return x


def param_sets(names: list[str], quick: bool) -> dict[str, list[list[int]]]:
    """The shapes of each param set by name ("big", "resnet50"; small ones with ``quick``)."""
    sets: dict[str, list[list[int]]] = {}
    if "big" in names:
        sets["big"] = [[200_000]] if quick else [[10_000_000]]
    if "resnet50" in names:
        resnet = resnet50_shapes()
        sets["resnet50"] = [s for s in resnet if len(s) == 1][:40] if quick else resnet
    return sets


def startup_child(set_name: str, name: str, quick: bool) -> None:
    """Run in a fresh process by :func:`measure_startup`: times the first step of our
    compiled optimizer (inductor's one-time setup included) and prints it as JSON."""
    params = make_params(param_sets([set_name], quick)[set_name])
    opt = _spec(name).ours(params, compile=True)
    start, cpu = time.perf_counter(), _cpu_seconds()
    opt.step()
    print(json.dumps({"wall_s": time.perf_counter() - start, "cpu_s": _cpu_seconds() - cpu}))


def measure_startup(set_name: str, name: str, quick: bool, threads: int | None) -> dict[str, Any]:
    """Cold start (empty inductor cache directory), then warm start (a second fresh process
    on the cache the first one filled) of the first compiled step."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench_step_inductor_") as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
        # this checkout's packages, whatever is installed
        env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--startup-child", set_name, name]
        cmd += (["--quick"] if quick else []) + ([] if threads is None else ["--threads", str(threads)])
        for kind in ("cold", "warm"):
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            out[kind] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def print_startup(startup: dict[str, Any]) -> None:
    print("\nStartup: first step of 'ours compiled' in a fresh process; cold = empty inductor cache, "
          "warm = a new process on the cache the cold one filled (wall s / CPU s with the C++ compiler)")
    print(f"  {'set':<10} {'optimizer':<10} {'cold wall':>10} {'cold cpu':>9} {'warm wall':>10} {'warm cpu':>9}")
    for set_name, per_set in startup.items():
        for name, r in per_set.items():
            print(f"  {set_name:<10} {name:<10} {r['cold']['wall_s']:>10.2f} {r['cold']['cpu_s']:>9.2f} "
                  f"{r['warm']['wall_s']:>10.2f} {r['warm']['cpu_s']:>9.2f}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few rounds and iterations (CI smoke)")
    parser.add_argument("--optimizers", nargs="+", default=list(SPECS), choices=list(SPECS) + list(TIMM_SPECS),
                        metavar="NAME",
                        help="default: every torch choice (" + " ".join(SPECS) + "). timm's classes (not run "
                             "by default; timm is an optional dependency): " + " ".join(TIMM_SPECS)
                             + ". Adahessian has no choice: its step needs Hessian-vector products from a "
                             "backward with create_graph=True, which a step on fixed gradients cannot give")
    parser.add_argument("--sets", nargs="+", default=["big", "resnet50"], choices=["big", "resnet50"])
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 7; --quick 3)")
    parser.add_argument("--iters", type=int, default=None, help="steps per variant per round (default 10; --quick 3)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after the first call")
    parser.add_argument("--skip", nargs="*", default=[], metavar="LABEL",
                        help="variant labels to leave out, e.g. 'torch compiled'")
    parser.add_argument("--json", type=Path, default=None, help="also write all numbers to this file")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for the run (default: torch's; 1 steadies a shared machine)")
    parser.add_argument("--startup", action="store_true",
                        help="also time the first compiled step in fresh processes (cold and warm inductor cache)")
    parser.add_argument("--startup-child", nargs=2, metavar=("SET", "OPTIMIZER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.startup_child:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        startup_child(*args.startup_child, quick=args.quick)
        return {}
    known = VARIANTS + [CLIP_REF, TIMM, TIMM_FOREACH]
    unknown = set(args.skip) - set(known)
    if unknown:
        parser.error(f"unknown --skip label(s) {sorted(unknown)}; known: {known}")
    rounds = args.rounds or (3 if args.quick else 7)
    iters = args.iters or (3 if args.quick else 10)

    sets = param_sets(args.sets, args.quick)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads; {rounds} rounds x {iters} steps per variant, "
          f"round-robin; median over rounds of the mean step time")
    results: dict[str, Any] = {}
    with torch._inductor.config.patch(force_disable_caches=True), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="dynamo_pgo force disabled")
        warm_inductor()
        for set_name, shapes in sets.items():
            numel = sum(math.prod(s) for s in shapes)
            print(f"\n== {set_name}: {len(shapes)} tensors, {numel / 1e6:.2f}M elements")
            per_set: dict[str, Any] = {"tensors": len(shapes), "numel": numel, "optimizers": {}}
            results[set_name] = per_set
            for name in args.optimizers:
                result = measure(name, shapes, rounds, iters, args.warmup, set(args.skip))
                per_set["optimizers"][name] = result
                print_table(set_name, name, result)
    summary = summarize(results, quick=args.quick)
    print_summary(summary, quick=args.quick)
    startup: dict[str, Any] = {}
    if args.startup:
        for set_name in sets:
            startup[set_name] = {name: measure_startup(set_name, name, args.quick, args.threads)
                                 for name in args.optimizers}
        print_startup(startup)

    report = {
        "torch": torch.__version__, "threads": threads, "python": platform.python_version(),
        "machine": platform.machine(), "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": _git_commit(), "argv": sys.argv[1:] if argv is None else list(argv), "quick": args.quick, "rounds": rounds, "iters": iters,
        "warmup": args.warmup, "skip": args.skip, "results": results, "summary": summary, "startup": startup,
    }
    if any(name in TIMM_SPECS for name in args.optimizers):
        report["timm_version"] = _load_timm_reference().timm_version()
    if args.json is not None:
        args.json.write_text(json.dumps(_finite_or_null(report), indent=2))
        print(f"\nwrote {args.json}")
    return report


if __name__ == "__main__":
    main()
