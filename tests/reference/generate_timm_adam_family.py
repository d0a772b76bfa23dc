"""Record timm 1.0.31's trajectories of its Adam-family optimizers (AdaBelief, AdamP, SGDP,
AdamWLegacy, NAdamLegacy, RAdamLegacy, RMSpropTF) into ``timm_adam_family.pt``.

Run from ``tests/reference``: ``python generate_timm_adam_family.py``. Uses ``timm_shim``
(timm without torchvision); the project and its tests never import timm.

Per case (an optimizer and its keyword arguments): float64 params of several shapes (a 1-D
bias, two 2-D matrices, a 4-D conv weight and a 1-D param without a gradient at step 2),
``STEPS`` steps on one param group whose lr is halved before step ``LR_CHANGE_AT``. The
gradients are ``grads(params, t)`` below, a function of the current params so that the
scale-invariant projection of AdamP/SGDP is exercised: the matrix ``w`` gets gradients
orthogonal to each of its rows (the channel view projects), the conv weight gradients
orthogonal to the whole tensor (the channel view fails, the layer view projects). The tests
use the same function on their own params. Recorded: the params after every step, the
state_dict after ``LOAD_AT`` steps (loaded by the tests, which then continue) and at the end,
the param group keys and ``str(inspect.signature(cls))``.
"""

from __future__ import annotations

import inspect
import os

import torch

STEPS = 7
LR_CHANGE_AT = 3
LOAD_AT = 4
SHAPES = {"bias": (4,), "w": (3, 5), "conv": (2, 2, 2, 2), "w2": (3, 3), "skip": (2,)}
NONE_AT = {"skip": 2}  # param name -> step without a gradient

CASES = {
    "AdaBelief": [
        dict(lr=0.01),
        dict(lr=0.01, rectify=False, amsgrad=True, weight_decay=0.1),
        dict(lr=0.01, decoupled_decay=False, weight_decay=0.1, degenerated_to_sgd=False, betas=(0.9, 0.99)),
        dict(lr=0.01, fixed_decay=True, weight_decay=0.01, amsgrad=True, betas=(0.8, 0.99), eps=1e-10),
    ],
    "AdamP": [
        dict(lr=0.01, weight_decay=0.1),
        dict(lr=0.01, nesterov=True, weight_decay=0.1, wd_ratio=0.2),
        dict(lr=0.01, caution=True, weight_decay=0.05),
        dict(lr=0.01, caution=True, nesterov=True, betas=(0.8, 0.99), delta=0.2),
    ],
    "SGDP": [
        dict(lr=0.1, momentum=0.9, weight_decay=0.1),
        dict(lr=0.1, momentum=0.9, nesterov=True, dampening=0.1, caution=True, weight_decay=0.01),
        dict(lr=0.1, caution=True),
        dict(lr=0.05, momentum=0.5, dampening=0.5, weight_decay=0.1),
    ],
    "AdamWLegacy": [
        dict(lr=0.01),
        dict(lr=0.01, amsgrad=True, caution=True, weight_decay=0.1),
        dict(lr=0.01, maximize=True, clipping_threshold=0.5, betas=(0.8, 0.99)),
        dict(lr=0.01, corrected_weight_decay=True, weight_decay=0.1, caution=True, clipping_threshold=0.7),
    ],
    "NAdamLegacy": [
        dict(lr=0.01),
        dict(lr=0.01, weight_decay=0.1, schedule_decay=0.01, betas=(0.8, 0.99)),
    ],
    "RAdamLegacy": [
        dict(lr=0.01),
        dict(lr=0.01, weight_decay=0.1, betas=(0.9, 0.99)),
    ],
    "RMSpropTF": [
        dict(lr=0.01),
        dict(lr=0.01, momentum=0.9),
        dict(lr=0.01, momentum=0.9, centered=True, caution=True, weight_decay=0.1),
        dict(lr=0.01, momentum=0.9, lr_in_momentum=False, caution=True, decoupled_decay=True, weight_decay=0.1),
        dict(lr=0.01, momentum=0.5, centered=True, decoupled_decay=True, corrected_weight_decay=True,
             weight_decay=0.1, alpha=0.8),
    ],
}


def initial_params() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1234)
    return {n: torch.randn(s, generator=gen, dtype=torch.float64) for n, s in SHAPES.items()}


def base_noise() -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(4321)
    return [{n: torch.randn(s, generator=gen, dtype=torch.float64) * (1 + t % 3) for n, s in SHAPES.items()}
            for t in range(STEPS)]


def grads(params: dict[str, torch.Tensor], noise: dict[str, torch.Tensor], t: int) -> dict:
    """The gradients at step ``t`` for the current ``params`` (see the module docstring)."""
    out = {}
    for n, b in noise.items():
        p = params[n].detach()
        if NONE_AT.get(n) == t:
            out[n] = None
        elif n == "w":  # orthogonal to every row of w
            out[n] = b - p * ((b * p).sum(1, keepdim=True) / (p * p).sum(1, keepdim=True))
        elif n == "conv":  # orthogonal to the whole of conv
            out[n] = b - p * ((b * p).sum() / (p * p).sum())
        else:
            out[n] = b
    return out


def flat(params: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([params[n].detach().reshape(-1) for n in SHAPES])


def plain(state_dict: dict) -> dict:
    """A state_dict as plain dicts, lists and tensors (``weights_only`` loadable)."""
    def conv(v):
        if isinstance(v, torch.Tensor):
            return v.detach().clone()
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(conv(x) for x in v)
        return v
    return conv(state_dict)


def run(cls, kwargs: dict, noise: list) -> dict:
    params = {n: torch.nn.Parameter(p.clone()) for n, p in initial_params().items()}
    opt = cls(list(params.values()), **kwargs)
    traj, loaded = [], None
    for t in range(STEPS):
        if t == LR_CHANGE_AT:
            opt.param_groups[0]["lr"] *= 0.5
        if t == LOAD_AT:
            loaded = plain(opt.state_dict())
        for n, g in grads(params, noise[t], t).items():
            params[n].grad = g
        opt.step()
        traj.append(flat(params))
    return {"kwargs": kwargs, "traj": torch.stack(traj), "state_at_load": loaded,
            "group_keys": sorted(opt.param_groups[0])}


def main() -> None:
    from timm_shim import timm_optim  # here, not at import: the tests import grads() from this module

    noise = base_noise()
    out = {"steps": STEPS, "lr_change_at": LR_CHANGE_AT, "load_at": LOAD_AT, "shapes": SHAPES,
           "none_at": NONE_AT, "params0": initial_params(), "noise": noise, "cases": {}, "signatures": {}}
    for name, cases in CASES.items():
        cls = getattr(timm_optim, name)
        out["signatures"][name] = str(inspect.signature(cls))
        out["cases"][name] = [run(cls, kwargs, noise) for kwargs in cases]
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "timm_adam_family.pt")
    torch.save(out, path)
    print(f"wrote {path}: {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
