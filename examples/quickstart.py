"""Quickstart: train a small regression MLP with a composed functional optimizer.

The model's parameters live in a plain dict; each step computes gradients with
torch.func, runs the optimizer's pure ``update`` and applies the updates.

Run: python examples/quickstart.py
"""

import torch
from tqdm import tqdm

import functional_optim as fo


def make_data(n: int = 2048, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 8, generator=gen) * 4 - 2
    y = torch.sin(x[:, :4].sum(1, keepdim=True)) + 0.1 * x[:, 4:].pow(2).sum(1, keepdim=True)
    return x, y


def init_params(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    sizes = [(8, 64), (64, 64), (64, 1)]
    return {f"layer{i}": {"w": torch.randn(a, b, generator=gen) / a ** 0.5, "b": torch.zeros(b)}
            for i, (a, b) in enumerate(sizes)}


def model(params, x):
    for i in range(len(params)):
        layer = params[f"layer{i}"]
        x = x @ layer["w"] + layer["b"]
        if i < len(params) - 1:
            x = torch.tanh(x)
    return x


def loss_fn(params, x, y):
    return torch.mean((model(params, x) - y) ** 2)


def main(steps: int = 600, batch: int = 128) -> float:
    torch.manual_seed(0)
    x, y = make_data()
    params = init_params()
    schedule = lambda count: 3e-3 * 0.5 * (1 + torch.cos(torch.pi * count.clamp(max=steps) / steps))
    optimizer = fo.chain(
        fo.clip_by_global_norm(1.0),
        fo.scale_by_adam(b1=0.9, b2=0.999),
        fo.add_decayed_weights(1e-4),
        fo.scale_by_learning_rate(schedule),
    )
    state = optimizer.init(params)
    value_and_grad = torch.func.grad_and_value(loss_fn)
    first = loss_fn(params, x, y).item()
    bar = tqdm(range(steps), desc="training", unit="step")
    for step in bar:
        idx = torch.randint(0, x.shape[0], (batch,))
        grads, loss = value_and_grad(params, x[idx], y[idx])
        updates, state = optimizer.update(grads, state, params)
        params = fo.apply_updates(params, updates)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    final = loss_fn(params, x, y).item()
    norm = fo.tree.get(state, "global_norm").item()
    print(f"full-data loss: {first:.4f} -> {final:.4f} (last pre-clip grad norm {norm:.3f})")
    return final


if __name__ == "__main__":
    main()
