"""Low-precision optimizer state: bytes per parameter, training quality and step time, in one run.

Three AdamW variants with the same hyperparameters:

  fp32 state   ``fo.adamw``                            (moments in the params' float32)
  8-bit state  ``fo.quantized_state(fo.adamw(...))``   (bitsandbytes' blockwise scheme: uint8
                                                        codes + one float32 absmax per 256
                                                        elements; leaves under 4096 elements
                                                        stay float32)
  bf16 state   ``fo.bf16_state(fo.adamw(...))``        (moments in bfloat16, stochastic rounding)

Measured:

1. Optimizer-state bytes per parameter on the ResNet-50 parameter set (the 161 shapes of
   torchvision's resnet50, 25.6M elements; ``benchmarks/data/resnet50_shapes.json``): the
   bytes of every state tensor over the number of param elements.
2. Training: a 8-256-256-1 MLP regressing the quickstart's synthetic target (fixed seed,
   ``--steps`` AdamW steps, lr 1e-3 cosine-decayed to 0, batch 128); the final loss of each
   variant on the whole dataset relative to fp32's, and the curves as a PNG (``--png``).
3. Step time on the ResNet-50 set: the compiled 8-bit AdamW step
   (``FunctionalOptimizer(..., compile=True)``) against ``torch.optim.AdamW(fused=True)``;
   both built and warmed up first, then timed round-robin in rounds (a shared machine's
   drift hits both alike); the median over rounds and the ratio from the same run.
   Alongside, timed in the same rounds, the floor of any engine on this machine: the whole
   8-bit AdamW step as one compiled graph over a single buffer of the same 25.6M elements
   (dequantise, update, per-block absmax, requantise; params, codes and absmax updated in
   place), with the library's quantisation functions.

Usage:
  python benchmarks/bench_state_memory.py                 # all three parts
  python benchmarks/bench_state_memory.py --skip-time     # memory and training only (seconds)
  python benchmarks/bench_state_memory.py --png curves.png --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import optree
import torch

import functional_optim as fo
from adapters import FunctionalOptimizer

HERE = Path(__file__).resolve().parent
SHAPES_FILE = HERE / "data" / "resnet50_shapes.json"
LR, WEIGHT_DECAY = 1e-3, 1e-2


def variants(lr: fo.ScalarOrSchedule = LR) -> dict[str, fo.GradientTransformation]:
    """The three AdamW variants, by label."""
    return {
        "fp32 state": fo.adamw(lr, weight_decay=WEIGHT_DECAY),
        "8-bit state": fo.quantized_state(fo.adamw(lr, weight_decay=WEIGHT_DECAY)),
        "bf16 state": fo.bf16_state(fo.adamw(lr, weight_decay=WEIGHT_DECAY)),
    }


def resnet50_params(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = json.loads(SHAPES_FILE.read_text())["shapes"]
    return [torch.randn(s, generator=gen) * 0.02 for s in shapes]


def state_bytes_per_param(tx: fo.GradientTransformation, params: list[torch.Tensor]) -> float:
    state = tx.init(params)
    leaves = [t for t in optree.tree_leaves(state, none_is_leaf=False) if isinstance(t, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in leaves) / sum(p.numel() for p in params)


def train(tx: fo.GradientTransformation, steps: int, seed: int = 0) -> tuple[list[float], float]:
    """Per-step minibatch losses of the MLP under ``tx`` (same data and init for every
    variant), and the final loss on the whole dataset."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(4096, 8, generator=gen) * 4 - 2
    y = torch.sin(x[:, :4].sum(1, keepdim=True)) + 0.1 * x[:, 4:].pow(2).sum(1, keepdim=True)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 256), torch.nn.Tanh(), torch.nn.Linear(256, 256),
                                torch.nn.Tanh(), torch.nn.Linear(256, 1))
    opt = FunctionalOptimizer(model.parameters(), tx)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (128,), generator=gen)
        opt.zero_grad()
        loss = (model(x[idx]) - y[idx]).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        return losses, (model(x) - y).pow(2).mean().item()


def one_graph_8bit_adamw(numel: int, block: int = 256):
    """A step function of 8-bit AdamW over one flat buffer of ``numel`` elements (rounded up to
    whole blocks), compiled as one graph: the least work any engine can do per step here."""
    from functional_optim.quantization import dequantize_blockwise, dynamic_map, dynamic_table, quantize_blockwise
    rows = -(-numel // block)
    gen = torch.Generator().manual_seed(2)
    p, g = torch.randn(rows * block, generator=gen), torch.randn(rows * block, generator=gen) * 1e-3
    maps = {signed: (dynamic_map(signed), dynamic_table(signed)) for signed in (True, False)}
    mu, mu_max = quantize_blockwise(g, maps[True][0], block, table=maps[True][1])
    nu, nu_max = quantize_blockwise(g * g, maps[False][0], block, table=maps[False][1])
    b1, b2, eps = 0.9, 0.999, 1e-8

    def step(p, g, mu, mu_max, nu, nu_max, count):
        m = dequantize_blockwise(mu, mu_max, maps[True][0], block)
        v = dequantize_blockwise(nu, nu_max, maps[False][0], block)
        m = m + (1 - b1) * (g - m)
        v = b2 * v + (1 - b2) * g * g
        count = count + 1
        step_size = LR / (1 - b1 ** count)
        denom = (v / (1 - b2 ** count)).sqrt() + eps
        p.copy_(p * (1 - LR * WEIGHT_DECAY) - step_size * m / denom)
        for codes, absmax, x, signed in ((mu, mu_max, m, True), (nu, nu_max, v, False)):
            c, a = quantize_blockwise(x, maps[signed][0], block, table=maps[signed][1])
            codes.copy_(c)
            absmax.copy_(a)
        return count

    compiled = torch.compile(step, fullgraph=True)
    state = {"count": torch.zeros((), dtype=torch.float32)}

    def run() -> None:
        state["count"] = compiled(p, g, mu, mu_max, nu, nu_max, state["count"])
    return run


def time_steps(rounds: int, iters: int, floor: bool = True) -> dict[str, float]:
    """Median seconds per step of compiled 8-bit AdamW and torch's fused AdamW (ResNet-50 set)."""
    runs = {}
    for label in ("torch fused AdamW", "ours compiled 8-bit AdamW"):
        params = [torch.nn.Parameter(p) for p in resnet50_params()]
        gen = torch.Generator().manual_seed(1)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen) * 1e-3
        if label.startswith("torch"):
            opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY, fused=True)
        else:
            opt = FunctionalOptimizer(params, fo.quantized_state(fo.adamw(LR, weight_decay=WEIGHT_DECAY)),
                                      compile=True)
        start = time.perf_counter()
        opt.step()  # warm-up (the compile, for ours)
        print(f"  {label}: first step {time.perf_counter() - start:.1f} s", flush=True)
        opt.step()
        runs[label] = (opt.step, [])
    if floor:
        label = "one-graph 8-bit AdamW (floor)"
        run = one_graph_8bit_adamw(sum(p.numel() for p in resnet50_params()))
        start = time.perf_counter()
        run()
        print(f"  {label}: first step {time.perf_counter() - start:.1f} s", flush=True)
        run()
        runs[label] = (run, [])
    for _ in range(rounds):
        for label, (step, times) in runs.items():
            start = time.perf_counter()
            for _ in range(iters):
                step()
            times.append((time.perf_counter() - start) / iters)
    return {label: statistics.median(times) for label, (_, times) in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500, help="training steps (default 1500)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--skip-time", action="store_true", help="skip the step-time part")
    parser.add_argument("--skip-floor", action="store_true", help="time without the one-graph floor")
    parser.add_argument("--png", default=None, help="write the training curves to this PNG")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out: dict = {}

    params = resnet50_params()
    print(f"1. optimizer-state bytes per parameter, ResNet-50 set ({sum(p.numel() for p in params) / 1e6:.1f}M):")
    out["bytes_per_param"] = {label: state_bytes_per_param(tx, params) for label, tx in variants().items()}
    for label, value in out["bytes_per_param"].items():
        print(f"  {label:12s} {value:6.3f}")
    del params

    print(f"2. training the MLP, {args.steps} steps (final loss: on the whole dataset):")
    runs = {label: train(tx, args.steps)
            for label, tx in variants(fo.cosine_decay_schedule(LR, args.steps)).items()}
    curves = {label: c for label, (c, _) in runs.items()}
    final = {label: f for label, (_, f) in runs.items()}
    out["final_loss"] = final
    for label, value in final.items():
        print(f"  {label:12s} {value:.5f}  ({value / final['fp32 state'] - 1:+.2%} vs fp32 state)")
    if args.png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4))
        for label, c in curves.items():
            smooth = [statistics.fmean(c[max(0, i - 24):i + 1]) for i in range(len(c))]
            ax.plot(smooth, label=f"AdamW, {label}")
        ax.set(xlabel="step", ylabel="training loss (25-step mean)", yscale="log",
               title="AdamW with fp32, 8-bit and bf16 optimizer state")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.png, dpi=120)
        print(f"  curves: {args.png}")

    if not args.skip_time:
        print(f"3. step time, ResNet-50 set ({args.rounds} rounds x {args.iters} steps, round-robin):")
        times = time_steps(args.rounds, args.iters, floor=not args.skip_floor)
        out["step_seconds"] = times
        ratio = times["ours compiled 8-bit AdamW"] / times["torch fused AdamW"]
        out["ratio_8bit_compiled_vs_fused"] = ratio
        for label, value in times.items():
            print(f"  {label:28s} {value * 1e3:8.1f} ms")
        print(f"  ratio (8-bit compiled / fused fp32): {ratio:.2f}")
        if "one-graph 8-bit AdamW (floor)" in times:
            floor_ratio = times["one-graph 8-bit AdamW (floor)"] / times["torch fused AdamW"]
            out["ratio_8bit_one_graph_vs_fused"] = floor_ratio
            print(f"  ratio (one-graph 8-bit floor / fused fp32): {floor_ratio:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
