"""A custom optimizer composed from pieces, used functionally and as a torch optimizer.

The optimizer (``custom_optimizer`` below) is built from small transforms:

* ``fo.clip_by_global_norm``: clip the gradient's global norm;
* ``fo.scale_by_adam``: Adam's moment scaling;
* ``fo.add_decayed_weights(..., mask=matrices)``: decoupled weight decay (placed after the
  Adam scaling and before the learning rate, as in AdamW) on matrices only: the mask is
  chosen by ``ndim``, so biases (and any other vector or scalar) are never decayed;
* ``fo.scale_by_learning_rate(fo.warmup_cosine_decay_schedule(...))``: a linear warmup
  then cosine decay, driven by the transform's own step count;
* ``fo.lookahead``: every ``sync_period`` steps the weights step back toward slow weights.

It trains the same small MLP classifier twice:

(a) functionally: params as a dict (``torch.func.functional_call``), gradients from
    ``torch.func.grad``, and ``init`` / ``update`` / ``apply_updates``;
(b) through ``adapters.FunctionalOptimizer`` with two param groups (the head with a
    larger peak learning rate), in an ordinary ``zero_grad / backward / step`` loop.

With one group configured like (a), the adapter follows the functional path step for
step (``main`` checks this and returns the largest difference).

Run:
  python examples/custom_optimizer.py           # 400 steps per path
  python examples/custom_optimizer.py --smoke   # a few seconds
"""

from __future__ import annotations

import argparse

import optree
import torch
from tqdm import tqdm

import functional_optim as fo
from adapters import FunctionalOptimizer


def matrices(params):
    """Weight-decay mask: True for tensors with 2 or more dims (weights), False otherwise."""
    return optree.tree_map(lambda p: p is not None and p.ndim >= 2, params, none_is_leaf=True)


def custom_optimizer(lr: float = 3e-3, weight_decay: float = 0.05, max_norm: float = 1.0,
                     warmup_steps: int = 20, total_steps: int = 400, sync_period: int = 5,
                     slow_step_size: float = 0.5) -> fo.GradientTransformation:
    """Clipped Adam with matrix-only decoupled weight decay, a warmup-cosine learning rate
    peaking at ``lr``, inside lookahead.

    Every argument is a keyword with a default, so ``FunctionalOptimizer`` can use this
    factory directly: floats become per-group hyperparameters (``group['lr']``, fed as
    tensors, so a group may change them between steps), ints (step counts) shape it.
    """
    schedule = fo.warmup_cosine_decay_schedule(0.0, lr, warmup_steps=warmup_steps,
                                               decay_steps=total_steps, end_value=0.0)
    inner = fo.named_chain(
        ("clip", fo.clip_by_global_norm(max_norm)),
        ("adam", fo.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8)),
        ("decay", fo.add_decayed_weights(weight_decay, mask=matrices)),
        ("lr", fo.scale_by_learning_rate(schedule)),
    )
    return fo.lookahead(inner, sync_period=sync_period, slow_step_size=slow_step_size)


def make_data(n: int = 1024, dim: int = 16, classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic classification set: labels from a random two-layer teacher, so an MLP can fit it."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=gen)
    w1, w2 = torch.randn(dim, 32, generator=gen), torch.randn(32, classes, generator=gen)
    return x, (torch.tanh(x @ w1) @ w2).argmax(1)


def make_model(dim: int = 16, hidden: int = 64, classes: int = 4, seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(),
                               torch.nn.Linear(hidden, hidden), torch.nn.GELU(),
                               torch.nn.Linear(hidden, classes))


def batches(n: int, batch: int, steps: int, seed: int = 2) -> list[torch.Tensor]:
    """The minibatch indices of every step (shared by both paths, so they see the same data)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, n, (batch,), generator=gen) for _ in range(steps)]


def full_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(model(x), y).item()


def train_functional(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, idx: list[torch.Tensor],
                     desc: str = "functional", **hyper) -> dict[str, torch.Tensor]:
    """Path (a): pure ``init / update / apply_updates`` on a params dict; returns the params."""
    params = {name: p.detach().clone() for name, p in model.named_parameters()}

    def loss_fn(params, xb, yb):
        return torch.nn.functional.cross_entropy(torch.func.functional_call(model, params, (xb,)), yb)

    opt = custom_optimizer(**hyper)
    state = opt.init(params)
    grad_fn = torch.func.grad_and_value(loss_fn)
    bar = tqdm(idx, desc=desc, unit="step")
    for step, i in enumerate(bar):
        grads, loss = grad_fn(params, x[i], y[i])
        updates, state = opt.update(grads, state, params)
        params = fo.apply_updates(params, updates)
        if step % 25 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    return params


def train_adapter(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, idx: list[torch.Tensor],
                  param_groups, desc: str = "adapter", **hyper) -> FunctionalOptimizer:
    """Path (b): the same factory as a ``torch.optim.Optimizer``; trains ``model`` in place."""
    opt = FunctionalOptimizer(param_groups, custom_optimizer, **hyper)
    bar = tqdm(idx, desc=desc, unit="step")
    for step, i in enumerate(bar):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[i]), y[i])
        loss.backward()
        opt.step()
        if step % 25 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    return opt


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a short run (a few seconds)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per path (default 400, smoke 60)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (body)")
    parser.add_argument("--head-lr", type=float, default=1e-2, help="peak learning rate of the head in (b)")
    args = parser.parse_args(argv)
    steps = args.steps or (60 if args.smoke else 400)
    hyper = dict(lr=args.lr, weight_decay=0.05, max_norm=1.0, warmup_steps=max(1, steps // 20),
                 total_steps=steps, sync_period=5, slow_step_size=0.5)
    x, y = make_data()
    idx = batches(x.shape[0], args.batch, steps)
    results: dict = {"steps": steps}

    # (a) functional
    model = make_model()
    results["functional_loss_before"] = full_loss(model, x, y)
    params = train_functional(model, x, y, idx, **hyper)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(params[name])
    results["functional_loss_after"] = full_loss(model, x, y)

    # (b) adapter, two groups: the head (last Linear) with its own peak learning rate
    model = make_model()
    *body, head = [m for m in model if isinstance(m, torch.nn.Linear)]
    groups = [{"params": [p for m in body for p in m.parameters()]},
              {"params": list(head.parameters()), "lr": args.head_lr}]
    results["adapter_loss_before"] = full_loss(model, x, y)
    train_adapter(model, x, y, idx, groups, desc="adapter (2 groups)", **hyper)
    results["adapter_loss_after"] = full_loss(model, x, y)

    # the adapter with one group, configured as (a): the same trajectory
    model = make_model()
    train_adapter(model, x, y, idx, model.parameters(), desc="adapter (1 group)", **hyper)
    diffs = [(p - params[name]).abs().max().item() for name, p in model.named_parameters()]
    results["max_abs_diff_functional_vs_adapter"] = max(diffs)

    print(f"(a) functional:          loss {results['functional_loss_before']:.4f} -> "
          f"{results['functional_loss_after']:.4f}")
    print(f"(b) adapter, two groups: loss {results['adapter_loss_before']:.4f} -> "
          f"{results['adapter_loss_after']:.4f}")
    print(f"functional vs adapter (one group), max |param difference| after {steps} steps: "
          f"{results['max_abs_diff_functional_vs_adapter']:.2e}")
    return results


if __name__ == "__main__":
    main()
