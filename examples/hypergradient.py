"""Hypergradient descent: learn an inner optimizer's learning rate and weight decay.

The inner optimizer is ``fo.sgd(lr=lr, momentum=0.9, weight_decay=wd)`` with ``lr`` and
``wd`` given as 0-d tensors, ``exp`` of two log-parameters (so they stay positive). The
inner problem is a small, noisy linear regression (fewer training samples than it takes
to pin down the weights), trained from zero for ``T`` full-batch steps. Because every
inner step is a pure ``update`` + ``apply_updates``, the validation loss after the ``T``
unrolled steps is an ordinary differentiable function of the log-hyperparameters:
``torch.func.grad_and_value`` gives its gradient, and an outer ``adapters.Adam`` steps
the log-hyperparameters.

Starting from a learning rate too small to fit in ``T`` steps and almost no weight decay,
the outer loop raises both: the validation loss falls, and a held-out test set (never
seen by either loop) confirms the learned values generalise.

Run:
  python examples/hypergradient.py                 # 150 outer steps, plot to hypergradient.png
  python examples/hypergradient.py --plot out.png  # plot elsewhere (needs matplotlib; skipped without it)
  python examples/hypergradient.py --smoke         # a few seconds, no plot unless --plot is given
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import torch
from tqdm import tqdm

import functional_optim as fo
from adapters import Adam

Params = dict[str, torch.Tensor]


@dataclass
class Problem:
    """A noisy linear regression: train / validation / test splits of one distribution."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def make_problem(dim: int = 40, n_train: int = 50, n_val: int = 500, n_test: int = 2000,
                 noise: float = 3.0, seed: int = 0) -> Problem:
    """``y = x @ w + noise``: few, noisy training samples, so fitting them in full overfits
    and some weight decay helps."""
    gen = torch.Generator().manual_seed(seed)
    w_true = torch.randn(dim, generator=gen)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, dim, generator=gen)
        return x, x @ w_true + noise * torch.randn(n, generator=gen)

    return Problem(*split(n_train), *split(n_val), *split(n_test))


def mse(params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x @ params["w"] + params["b"] - y).pow(2).mean()


def train_inner(problem: Problem, lr: torch.Tensor | float, weight_decay: torch.Tensor | float,
                steps: int, momentum: float = 0.9) -> Params:
    """``steps`` pure SGD steps from zero; differentiable in ``lr`` and ``weight_decay``."""
    opt = fo.sgd(lr=lr, momentum=momentum, weight_decay=weight_decay)
    params = {"w": torch.zeros(problem.x_train.shape[1]), "b": torch.zeros(())}
    state = opt.init(params)
    for _ in range(steps):
        grads = torch.func.grad(mse)(params, problem.x_train, problem.y_train)
        updates, state = opt.update(grads, state, params)
        params = fo.apply_updates(params, updates)
    return params


def val_loss_after(problem: Problem, log_lr: torch.Tensor, log_wd: torch.Tensor, steps: int) -> torch.Tensor:
    """The validation loss after ``steps`` unrolled inner steps (the outer objective)."""
    params = train_inner(problem, log_lr.exp(), log_wd.exp(), steps)
    return mse(params, problem.x_val, problem.y_val)


def evaluate(problem: Problem, lr: float, weight_decay: float, steps: int) -> dict[str, float]:
    """Validation and test loss of the inner run with fixed hyperparameters."""
    with torch.no_grad():
        params = train_inner(problem, lr, weight_decay, steps)
        return {"val": mse(params, problem.x_val, problem.y_val).item(),
                "test": mse(params, problem.x_test, problem.y_test).item()}


def save_plot(path: str, history: dict[str, list[float]]) -> bool:
    """Plot lr, weight decay and validation loss per outer step; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return False
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, key, title in zip(axes, ("lr", "weight_decay", "val_loss"),
                              ("learning rate", "weight decay", "validation loss")):
        ax.plot(history[key])
        ax.set_title(title)
        ax.set_xlabel("outer step")
        if key != "val_loss":
            ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"plot saved to {path}")
    return True


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a short run (a few seconds)")
    parser.add_argument("--outer-steps", type=int, default=None, help="default 150 (smoke: 40)")
    parser.add_argument("--inner-steps", type=int, default=None, help="unrolled inner steps T (default 40, smoke: 30)")
    parser.add_argument("--meta-lr", type=float, default=None,
                        help="outer Adam lr on the log-hyperparameters (default 0.1, smoke: 0.2)")
    parser.add_argument("--lr0", type=float, default=1e-3, help="initial inner learning rate")
    parser.add_argument("--wd0", type=float, default=1e-3, help="initial inner weight decay")
    parser.add_argument("--plot", default=None,
                        help="PNG path (default hypergradient.png; smoke: no plot unless given)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    outer_steps = args.outer_steps or (40 if args.smoke else 150)
    inner_steps = args.inner_steps or (30 if args.smoke else 40)
    meta_lr = args.meta_lr or (0.2 if args.smoke else 0.1)
    plot = args.plot if (args.plot or args.smoke) else "hypergradient.png"

    problem = make_problem()
    log_lr = torch.nn.Parameter(torch.tensor(math.log(args.lr0)))
    log_wd = torch.nn.Parameter(torch.tensor(math.log(args.wd0)))
    outer = Adam([log_lr, log_wd], lr=meta_lr)
    # d(val loss)/d(log lr, log wd) through all inner steps, and the loss itself
    hypergrad = torch.func.grad_and_value(
        lambda a, b: val_loss_after(problem, a, b, inner_steps), argnums=(0, 1))

    history: dict[str, list[float]] = {"lr": [], "weight_decay": [], "val_loss": []}
    bar = tqdm(range(outer_steps), desc="hypergradient", unit="outer step")
    for _ in bar:
        (g_lr, g_wd), val = hypergrad(log_lr.detach(), log_wd.detach())
        history["lr"].append(log_lr.exp().item())
        history["weight_decay"].append(log_wd.exp().item())
        history["val_loss"].append(val.item())
        log_lr.grad, log_wd.grad = g_lr, g_wd
        outer.step()
        bar.set_postfix(val=f"{val.item():.3f}", lr=f"{history['lr'][-1]:.2e}",
                        wd=f"{history['weight_decay'][-1]:.2e}")

    lr, wd = log_lr.exp().item(), log_wd.exp().item()
    before = evaluate(problem, args.lr0, args.wd0, inner_steps)
    after = evaluate(problem, lr, wd, inner_steps)
    history["lr"].append(lr)
    history["weight_decay"].append(wd)
    history["val_loss"].append(after["val"])
    print(f"lr {args.lr0:.2e} -> {lr:.2e}, weight decay {args.wd0:.2e} -> {wd:.2e}")
    print(f"validation loss {before['val']:.3f} -> {after['val']:.3f}, "
          f"held-out test loss {before['test']:.3f} -> {after['test']:.3f}")
    plotted = bool(plot) and save_plot(plot, history)
    return {"lr0": args.lr0, "wd0": args.wd0, "lr": lr, "weight_decay": wd, "inner_steps": inner_steps,
            "val_loss_before": before["val"], "val_loss_after": after["val"],
            "test_loss_before": before["test"], "test_loss_after": after["test"],
            "history": history, "plot": plot if plotted else None}


if __name__ == "__main__":
    main()
