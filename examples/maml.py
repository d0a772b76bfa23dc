"""MAML on sine-wave regression: a pure inner optimizer under ``vmap``, differentiated twice.

Model-Agnostic Meta-Learning (Finn et al. 2017, arXiv:1703.03400), section 5.1: each task
is a sine wave ``y = A sin(x - phase)`` with ``A`` in [0.1, 5], ``phase`` in [0, pi] and
``x`` in [-5, 5], seen through K=10 support points (to adapt on) and 10 query points (to
score the adaptation). MAML learns the initial weights of a 1-40-40-1 MLP such that a few
optimizer steps on a new task's support points fit that task well.

What it demonstrates:

- the inner loop is ``fo.adam`` used purely (``init`` / ``update`` / ``fo.apply_updates``)
  for 5 steps, on a ``torch.nn`` module called functionally (``torch.func.functional_call``
  with a dict of parameters);
- ``torch.func.vmap`` runs the inner loop of 16 tasks at once with the meta-parameters and
  the inner optimizer's initial state **shared** (unbatched, ``in_dims=None``): only the
  task data is batched, and the per-task Adam moments become batched as they are updated;
- the meta-gradient is ordinary autograd: ``meta_loss(...).backward()`` differentiates
  through the vmapped inner loop, second order (through Adam's moments and square root,
  finite for ReLU too, where many gradients are exactly zero);
- the meta-optimizer is ``adapters.Adam``, the drop-in for ``torch.optim.Adam``.

At the end it adapts a meta-learned and a freshly initialised model to held-out tasks with
the same 5 inner steps and prints both query losses: the meta-learned one is far lower.

Run:
  python examples/maml.py                   # 3000 meta-steps (a few minutes on a laptop CPU)
  python examples/maml.py --smoke           # 30 meta-steps, a few seconds
  python examples/maml.py --steps 500 --activation tanh --seed 1

The pieces (``make_model``, ``sample_tasks``, ``inner_adapt``, ``meta_loss``) are importable;
``benchmarks/bench_meta.py`` times this meta-step against TorchOpt and higher.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import statistics
from collections.abc import Iterator
from typing import Any

import torch
from torch.func import functional_call, grad, vmap
from tqdm import tqdm

import functional_optim as fo
from adapters import Adam

Params = dict[str, torch.Tensor]
Batch = dict[str, torch.Tensor]

TASKS_PER_BATCH = 16
K_SUPPORT = 10
K_QUERY = 10
INNER_STEPS = 5
INNER_LR = 0.01
META_LR = 1e-3
SMOKE_STEPS = 30
HELDOUT_TASKS = 256


def make_model(activation: str = "relu", hidden: int = 40) -> torch.nn.Module:
    """The 1-hidden-hidden-1 MLP of the MAML paper (ReLU by default, or tanh)."""
    act = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}[activation]
    return torch.nn.Sequential(torch.nn.Linear(1, hidden), act(),
                               torch.nn.Linear(hidden, hidden), act(),
                               torch.nn.Linear(hidden, 1))


def sample_tasks(n: int, gen: torch.Generator, k_support: int = K_SUPPORT, k_query: int = K_QUERY,
                 dtype: torch.dtype = torch.float32) -> Batch:
    """``n`` sine tasks: support and query inputs/targets of shape ``(n, k, 1)``."""
    amplitude = torch.empty(n, 1, 1, dtype=dtype).uniform_(0.1, 5.0, generator=gen)
    phase = torch.empty(n, 1, 1, dtype=dtype).uniform_(0.0, math.pi, generator=gen)
    x_support = torch.empty(n, k_support, 1, dtype=dtype).uniform_(-5.0, 5.0, generator=gen)
    x_query = torch.empty(n, k_query, 1, dtype=dtype).uniform_(-5.0, 5.0, generator=gen)
    return {"x_support": x_support, "y_support": amplitude * torch.sin(x_support - phase),
            "x_query": x_query, "y_query": amplitude * torch.sin(x_query - phase)}


def task_loss(model: torch.nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the model with weights ``params`` on one task's points."""
    return ((functional_call(model, params, (x,)) - y) ** 2).mean()


def inner_adapt(params: Params, x: torch.Tensor, y: torch.Tensor, *, model: torch.nn.Module,
                opt: fo.GradientTransformation, state: Any = None, steps: int = INNER_STEPS) -> Params:
    """``steps`` pure optimizer steps on one task's support set, starting from ``params``.

    ``state`` is the optimizer's initial state (``opt.init(params)`` when None); passing it
    in lets ``vmap`` share one unbatched state across tasks. Every step is differentiable,
    so the adapted weights carry the graph back to ``params``.
    """
    if state is None:
        state = opt.init(params)
    loss_grad = grad(task_loss, argnums=1)
    for _ in range(steps):
        grads = loss_grad(model, params, x, y)
        updates, state = opt.update(grads, state, params)
        params = fo.apply_updates(params, updates)
    return params


def query_losses(params: Params, batch: Batch, *, model: torch.nn.Module, opt: fo.GradientTransformation,
                 steps: int = INNER_STEPS, use_vmap: bool = True) -> torch.Tensor:
    """Each task's query loss after adapting ``params`` to its support set: shape ``(n_tasks,)``.

    ``use_vmap=True`` adapts all tasks at once with ``params`` and the optimizer state shared
    (``in_dims=None``); ``False`` runs the same computation task by task in a Python loop.
    """
    state = opt.init(params)

    def one_task(params, state, x_s, y_s, x_q, y_q):
        adapted = inner_adapt(params, x_s, y_s, model=model, opt=opt, state=state, steps=steps)
        return task_loss(model, adapted, x_q, y_q)

    data = (batch["x_support"], batch["y_support"], batch["x_query"], batch["y_query"])
    if use_vmap:
        return vmap(one_task, in_dims=(None, None, 0, 0, 0, 0))(params, state, *data)
    return torch.stack([one_task(params, state, *task) for task in zip(*data)])


def meta_loss(params: Params, batch: Batch, *, model: torch.nn.Module, opt: fo.GradientTransformation | None = None,
              steps: int = INNER_STEPS, use_vmap: bool = True) -> torch.Tensor:
    """MAML's objective: the mean over tasks of the query loss after ``steps`` inner steps
    (inner optimizer ``fo.adam(lr=INNER_LR)`` unless given). Differentiable w.r.t. ``params``."""
    opt = fo.adam(lr=INNER_LR) if opt is None else opt
    return query_losses(params, batch, model=model, opt=opt, steps=steps, use_vmap=use_vmap).mean()


def evaluate(model: torch.nn.Module, batch: Batch, opt: fo.GradientTransformation,
             steps: int = INNER_STEPS) -> float:
    """Mean query loss of (held-out) tasks after ``steps`` inner steps from ``model``'s weights."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    return meta_loss(params, batch, model=model, opt=opt, steps=steps).item()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Meta-train, print the falling meta-loss and a held-out comparison; return the numbers.

    Returns a dict with ``meta_losses`` (one per meta-step), ``first``/``last`` (first and
    last meta-loss), ``first10``/``last10`` (means of the first and last ten),
    ``grads_finite`` (every meta-gradient was finite) and ``heldout`` (query losses on
    held-out tasks: before/after adaptation, for the meta-learned and a fresh model).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_STEPS} meta-steps (a few seconds)")
    parser.add_argument("--steps", type=int, default=None, help="meta-steps (default 3000)")
    parser.add_argument("--activation", choices=["relu", "tanh"], default="relu")
    parser.add_argument("--inner-lr", type=float, default=INNER_LR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the tensors are tiny, more threads only add overhead)")
    args = parser.parse_args(argv)
    steps = args.steps or (SMOKE_STEPS if args.smoke else 3000)
    with torch_threads(args.threads):
        return _train(args, steps)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads, then restore the previous number."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _train(args: argparse.Namespace, steps: int) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = make_model(args.activation)
    initial = copy.deepcopy(model)  # the same weights, never meta-trained: the baseline
    inner_opt = fo.adam(lr=args.inner_lr)
    meta_opt = Adam(model.parameters(), lr=META_LR)
    params = dict(model.named_parameters())  # the live nn.Parameters: .backward() fills their .grad
    heldout_batch = sample_tasks(HELDOUT_TASKS, torch.Generator().manual_seed(10_000 + args.seed))
    eval_every = max(1, steps // 10)

    losses: list[float] = []
    heldout_curve: list[tuple[int, float]] = [(0, evaluate(model, heldout_batch, inner_opt))]
    grads_finite = True
    bar = tqdm(range(1, steps + 1), desc=f"MAML ({args.activation})", unit="meta-step")
    for step in bar:
        batch = sample_tasks(TASKS_PER_BATCH, gen)
        meta_opt.zero_grad()
        loss = meta_loss(params, batch, model=model, opt=inner_opt)
        loss.backward()
        grads_finite &= all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())
        meta_opt.step()
        losses.append(loss.item())
        if step % eval_every == 0 or step == steps:
            heldout_curve.append((step, evaluate(model, heldout_batch, inner_opt)))
            bar.set_postfix(meta_loss=f"{statistics.fmean(losses[-eval_every:]):.3f}",
                            heldout=f"{heldout_curve[-1][1]:.3f}")
    bar.close()

    first10, last10 = statistics.fmean(losses[:10]), statistics.fmean(losses[-10:])
    print(f"meta-loss (mean query MSE after {INNER_STEPS} inner Adam steps, {TASKS_PER_BATCH} random tasks "
          f"per meta-step): first 10 steps {first10:.3f}, last 10 steps {last10:.3f}")
    print(f"meta-loss on {HELDOUT_TASKS} held-out tasks, by meta-step: "
          + ", ".join(f"{step}: {value:.3f}" for step, value in heldout_curve))
    heldout = {}
    for name, net in (("meta-learned", model), ("initial", initial)):
        before, after = evaluate(net, heldout_batch, inner_opt, steps=0), evaluate(net, heldout_batch, inner_opt)
        heldout[name] = {"before": before, "after": after}
        print(f"held-out tasks, {name} weights: query MSE {before:.3f} before adaptation, "
              f"{after:.3f} after {INNER_STEPS} inner Adam steps")
    return {"meta_losses": losses, "first": losses[0], "last": losses[-1], "first10": first10,
            "last10": last10, "heldout_curve": heldout_curve, "grads_finite": grads_finite,
            "heldout": heldout}


if __name__ == "__main__":
    main()
