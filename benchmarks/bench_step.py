"""Optimizer step speed: functional_optim's adapter against torch.optim, in one run.

For Adam, AdamW and SGD with momentum, on (a) one 10M-element tensor and (b) the 161
parameter shapes of ResNet-50 (25.6M elements), prints the median step time of:
  torch for-loop (foreach=False), torch foreach, torch fused, torch.compile(opt.step),
  ours eager (FunctionalOptimizer, compile=False), ours compiled (compile=True),
the ratio of each to ours, cold compile times, and effective GB/s (bytes an optimal
kernel must move) next to an in-place triad (``a = b + s*c``) measured in the same run.

Usage:
  python benchmarks/bench_step.py            # full sizes (several minutes: torch's compile is slow)
  python benchmarks/bench_step.py --quick    # small sizes, CI smoke
  python benchmarks/bench_step.py --optimizers adam --sets big
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from adapters import SGD, Adam, AdamW

HERE = Path(__file__).resolve().parent
SHAPES_FILE = HERE / "data" / "resnet50_shapes.json"  # torchvision resnet50, named_parameters() order

# bytes per element an ideal fp32 kernel moves: Adam reads p, g, m, v and writes p, m, v;
# SGD with momentum reads p, g, buf and writes p, buf
BYTES_PER_ELEMENT = {"adam": 28, "adamw": 28, "sgd": 20}
OURS = {"adam": Adam, "adamw": AdamW, "sgd": SGD}
TORCH = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
KWARGS = {"adam": dict(lr=1e-3), "adamw": dict(lr=1e-3, weight_decay=1e-2), "sgd": dict(lr=1e-2, momentum=0.9)}


def resnet50_shapes() -> list[list[int]]:
    return json.loads(SHAPES_FILE.read_text())["shapes"]


def make_params(shapes: list[list[int]], seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=gen))
        p.grad = torch.randn(shape, generator=gen)
        params.append(p)
    return params


def median_ms(fn, iters: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def timed_first_call(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def triad_gbps(numel: int, iters: int) -> float:
    a, b, c = torch.randn(numel), torch.randn(numel), torch.randn(numel)
    ms = median_ms(lambda: torch.add(b, c, alpha=0.5, out=a), iters)
    return 12 * numel / (ms * 1e-3) / 1e9


def variants(name: str, shapes: list[list[int]]):
    """(label, build) pairs; build() returns (step_fn, is_compiled)."""
    kw = KWARGS[name]

    def torch_variant(**flags):
        def build():
            opt = TORCH[name](make_params(shapes), **kw, **flags)
            return opt.step, False
        return build

    def torch_compiled():
        opt = TORCH[name](make_params(shapes), **kw)
        return torch.compile(opt.step), True

    def ours(compile_step: bool):
        def build():
            opt = OURS[name](make_params(shapes), **kw, compile=compile_step)
            return opt.step, compile_step
        return build

    return [
        ("torch for-loop", torch_variant(foreach=False)),
        ("torch foreach", torch_variant(foreach=True)),
        ("torch fused", torch_variant(fused=True)),
        ("torch compiled", torch_compiled),
        ("ours eager", ours(False)),
        ("ours compiled", ours(True)),
    ]


def run(names: list[str], sets: dict[str, list[list[int]]], iters: int, skip: set[str]) -> None:
    torch.manual_seed(0)
    for set_name, shapes in sets.items():
        numel = sum(torch.Size(s).numel() for s in shapes)
        triad = triad_gbps(numel, iters)
        print(f"\n== {set_name}: {len(shapes)} tensors, {numel / 1e6:.1f}M elements; "
              f"in-place triad {triad:.1f} GB/s (threads={torch.get_num_threads()})")
        for name in names:
            rows = []
            for label, build in variants(name, shapes):
                if label in skip:
                    continue
                torch._dynamo.reset()
                step, compiled = build()
                cold = timed_first_call(step) if compiled else None
                ms = median_ms(step, iters)
                gbps = BYTES_PER_ELEMENT[name] * numel / (ms * 1e-3) / 1e9
                rows.append((label, ms, cold, gbps))
            ours_ms = {label: ms for label, ms, _, _ in rows}
            print(f"\n{name} (ideal traffic {BYTES_PER_ELEMENT[name]} B/element)")
            print(f"  {'variant':<16} {'median ms':>10} {'cold compile s':>15} {'GB/s':>7} {'% triad':>8} "
                  f"{'ours-compiled / this':>21} {'ours-eager / this':>18}")
            for label, ms, cold, gbps in rows:
                cold_txt = f"{cold:.2f}" if cold is not None else "-"
                rc = ours_ms.get("ours compiled", float("nan")) / ms
                re = ours_ms.get("ours eager", float("nan")) / ms
                print(f"  {label:<16} {ms:>10.2f} {cold_txt:>15} {gbps:>7.1f} {100 * gbps / triad:>7.0f}% "
                      f"{rc:>21.2f} {re:>18.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few iterations (CI smoke)")
    parser.add_argument("--optimizers", nargs="+", default=["adam", "adamw", "sgd"], choices=list(OURS))
    parser.add_argument("--sets", nargs="+", default=["big", "resnet50"], choices=["big", "resnet50"])
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--skip", nargs="*", default=[], help="variant labels to leave out, e.g. 'torch compiled'")
    args = parser.parse_args(argv)
    sets = {}
    if "big" in args.sets:
        sets["big"] = [[200_000]] if args.quick else [[10_000_000]]
    if "resnet50" in args.sets:
        resnet = resnet50_shapes()
        sets["resnet50"] = [s for s in resnet if len(s) == 1][:40] if args.quick else resnet
    iters = args.iters or (5 if args.quick else 20)
    run(args.optimizers, sets, iters, set(args.skip))


if __name__ == "__main__":
    main()
