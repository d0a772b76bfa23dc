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


def _ours_mode(opt: torch.optim.Optimizer) -> str:
    """Whether our compiled step runs on flat buffers (private attribute; best effort)."""
    try:
        flat = [rt.flat is not None for rt in opt._groups]
    except AttributeError:
        return ""
    return "flat buffers" if all(flat) else "per-param"


def build_variants(name: str, shapes: list[list[int]], skip: set[str]) -> list[Variant]:
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
                               note=_ours_mode(opt) if compiled else "", keep=opt))
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
    spec = SPECS[name]
    numel = sum(math.prod(s) for s in shapes)
    torch._dynamo.reset()
    variants = build_variants(name, shapes, skip) + [build_triad(numel)]
    warm_up(variants, warmup)
    time_round_robin(variants, rounds, iters)
    by_label = {v.label: v for v in variants}
    triad_gbps = gbps(TRIAD_BYTES, numel, by_label[TRIAD].median_ms)
    eager = by_label.get("ours eager")
    compiled = by_label.get("ours compiled")
    result: dict[str, Any] = {"bytes_per_element": spec.bytes_per_element, "triad_gbps": triad_gbps,
                              "variants": {}}
    for v in variants:
        bpe = TRIAD_BYTES if v.label == TRIAD else spec.bytes_per_element
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


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for set_name, per_set in results.items():
        rows: dict[str, Any] = {}
        for name, result in per_set["optimizers"].items():
            ms = {label: r["median_ms"] for label, r in result["variants"].items()}
            rows[name] = {col: ratio(ms.get(a), ms.get(b)) for col, a, b in SUMMARY_COLUMNS}
        clip = per_set["optimizers"].get("clip")
        clip_ratio = None
        if clip is not None:
            ms = {label: r["median_ms"] for label, r in clip["variants"].items()}
            clip_ratio = ratio(ms.get("ours compiled"), ms.get(CLIP_REF))
        summary[set_name] = {"ratios": rows, "clip_compiled_over_torch_fused_adam": clip_ratio}
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    print("\nSummary: time ratios from the same rounds (< 1: the first named is faster; "
          "eager/compiled = ours)")
    for set_name, s in summary.items():
        width = max([10, len(set_name), *map(len, s["ratios"])])
        print(f"\n  {set_name:<{width}}" + "".join(f"{col:>25}" for col, _, _ in SUMMARY_COLUMNS))
        for name, row in s["ratios"].items():
            print(f"  {name:<{width}}" + "".join(f"{_f(row[col], '.2f'):>25}" for col, _, _ in SUMMARY_COLUMNS))
        print(f"  clip chain compiled / torch fused Adam (no clip): "
              f"{_f(s['clip_compiled_over_torch_fused_adam'], '.2f')}")


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
    opt = SPECS[name].ours(params, compile=True)
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
    parser.add_argument("--optimizers", nargs="+", default=list(SPECS), choices=list(SPECS))
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
    unknown = set(args.skip) - set(VARIANTS) - {CLIP_REF}
    if unknown:
        parser.error(f"unknown --skip label(s) {sorted(unknown)}; known: {VARIANTS + [CLIP_REF]}")
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
    summary = summarize(results)
    print_summary(summary)
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
    if args.json is not None:
        args.json.write_text(json.dumps(_finite_or_null(report), indent=2))
        print(f"\nwrote {args.json}")
    return report


if __name__ == "__main__":
    main()
