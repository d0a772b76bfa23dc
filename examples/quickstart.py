"""Quickstart: train a small regression MLP with a composed optimizer.

The optimizer is a chain of small functional transforms (clip, Adam scaling, weight
decay, learning rate) turned into a real ``torch.optim.Optimizer`` by
``FunctionalOptimizer``, so an ordinary training loop and a torch LR scheduler drive it.

Run: python examples/quickstart.py
"""

import torch
from tqdm import tqdm

import functional_optim as fo
from adapters import FunctionalOptimizer


def make_data(n: int = 2048, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 8, generator=gen) * 4 - 2
    y = torch.sin(x[:, :4].sum(1, keepdim=True)) + 0.1 * x[:, 4:].pow(2).sum(1, keepdim=True)
    return x, y


def clipped_adamw(lr: float = 1e-3, max_norm: float = 1.0, weight_decay: float = 1e-4) -> fo.GradientTransformation:
    """A composed optimizer: its keyword arguments become the param groups' hyperparameters."""
    return fo.named_chain(
        ("clip", fo.clip_by_global_norm(max_norm)),
        ("adam", fo.scale_by_adam(b1=0.9, b2=0.999)),
        ("decay", fo.add_decayed_weights(weight_decay)),
        ("lr", fo.scale_by_learning_rate(lr)),
    )


def main(steps: int = 600, batch: int = 128) -> float:
    torch.manual_seed(0)
    x, y = make_data()
    model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh(),
                                torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    opt = FunctionalOptimizer(model.parameters(), clipped_adamw, lr=3e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    loss_fn = torch.nn.MSELoss()
    with torch.no_grad():
        first = loss_fn(model(x), y).item()
    bar = tqdm(range(steps), desc="training", unit="step")
    for step in bar:
        idx = torch.randint(0, x.shape[0], (batch,))
        opt.zero_grad()
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        scheduler.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{opt.param_groups[0]['lr']:.2e}")
    with torch.no_grad():
        final = loss_fn(model(x), y).item()
    print(f"full-data loss: {first:.4f} -> {final:.4f}")
    return final


if __name__ == "__main__":
    main()
