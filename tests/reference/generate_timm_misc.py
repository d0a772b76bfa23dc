"""Record timm 1.0.31's MADGRAD, Adafactor and Adahessian trajectories into ``timm_misc.pt``.

Run from ``tests/reference``: ``python generate_timm_misc.py``. Uses the real ``timm.optim``
through ``timm_shim`` (the project and its tests never import timm). Everything is float64:

* MADGRAD and Adafactor step on fixed gradients (a fixed generator) for a 1-D bias, a 2-D
  matrix and a 4-D conv weight (plus a 17x18 matrix for Adafactor's default factoring
  size); the gradients are stored too.
* Adahessian trains a small conv + linear model on a non-quadratic loss with
  ``loss.backward(create_graph=True)``, so its Hessian-vector products are nonzero.

Per case: the params after every step, timm's state_dict after step ``MID`` and at the end
(loadable with ``torch.load(weights_only=True)``). Also ``str(inspect.signature(cls))``.
"""

from __future__ import annotations

import inspect

import torch
from timm_shim import timm_optim

STEPS = 6
MID = 3
DT = torch.float64


def _params(shapes: dict[str, tuple], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=gen, dtype=DT) * 0.5 for n, s in shapes.items()}


def _grads(shapes: dict[str, tuple], seed: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for t in range(STEPS):
        g = {n: torch.randn(s, generator=gen, dtype=DT) * (1.0 + 0.3 * t) for n, s in shapes.items()}
        out.append(g)
    g0 = out[0]["bias"]
    g0[1] = 0.0  # an exactly zero gradient entry (MADGRAD's cube root of 0, Adafactor's eps)
    return out


SMALL = {"bias": (4,), "matrix": (3, 5), "conv": (3, 4, 2, 2)}  # factored with min_dim_size_to_factor=1
BIG = {"bias": (4,), "matrix": (17, 18), "conv": (17, 17, 1, 1)}  # factored at the default size 16


def _flat(params: list[torch.Tensor]) -> torch.Tensor:
    """The params after a step, flattened and concatenated in order (one row of ``traj``)."""
    return torch.cat([p.detach().reshape(-1) for p in params]).clone()


def unflat(vec: torch.Tensor, shapes: dict[str, tuple]) -> list[torch.Tensor]:
    """A row of ``traj`` (or ``grads``) back as tensors of ``shapes`` (in order)."""
    out, i = [], 0
    for s in shapes.values():
        n = int(torch.Size(s).numel())
        out.append(vec[i:i + n].reshape(s))
        i += n
    return out


def _state(opt: torch.optim.Optimizer) -> dict:
    sd = opt.state_dict()
    state = {int(i): {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
             for i, s in sd["state"].items()}
    groups = [{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return {"state": state, "param_groups": groups}


def run_fixed(cls, kwargs: dict, shapes: dict, init: dict, grads: list, keep_mid: bool) -> dict:
    params = [torch.nn.Parameter(init[n].clone()) for n in shapes]
    opt = cls(params, **kwargs)
    traj, mid = [], None
    for t in range(STEPS):
        for p, g in zip(params, unflat(grads[t], shapes)):
            p.grad = g.clone()
        opt.step()
        traj.append(_flat(params))
        if t + 1 == MID and keep_mid:
            mid = _state(opt)
    return {"kwargs": kwargs, "traj": torch.stack(traj), "mid": mid, "final": _state(opt)}


# -- Adahessian: a small model with a real second-order loss --------------------------

AH_SHAPES = {"conv": (3, 2, 3, 3), "bias": (3,), "w": (3, 4)}


def ah_loss(p: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """conv -> tanh -> spatial mean -> linear -> a smooth non-quadratic loss."""
    conv, bias, w = p
    h = torch.tanh(torch.nn.functional.conv2d(x, conv, bias)).mean(dim=(2, 3))
    out = h @ w
    return (out ** 2).mean() + torch.cos(out).sum() * 0.3 + (h ** 4).sum() * 0.1


def run_adahessian(kwargs: dict, init: dict, xs: list, keep_mid: bool) -> dict:
    params = [torch.nn.Parameter(init[n].clone()) for n in AH_SHAPES]
    opt = timm_optim.Adahessian(params, **kwargs)
    traj, mid = [], None
    for t in range(STEPS):
        opt.zero_grad()
        ah_loss(params, xs[t]).backward(create_graph=True)
        opt.step()
        traj.append(_flat(params))
        if t + 1 == MID and keep_mid:
            mid = _state(opt)
    for p in params:  # drop the graph kept by the grads
        p.grad = None
    return {"kwargs": kwargs, "traj": torch.stack(traj), "mid": mid, "final": _state(opt)}


MADGRAD_CASES = [
    dict(lr=0.05),
    dict(lr=0.05, momentum=0.0),
    dict(lr=0.05, weight_decay=0.1),
    dict(lr=0.05, weight_decay=0.1, decoupled_decay=True),
    dict(lr=0.05, momentum=0.0, weight_decay=0.1, decoupled_decay=True),
    dict(lr=0.02, momentum=0.5, eps=0.0, weight_decay=0.05),
]

ADAFACTOR_CASES = [
    (dict(), "small"),  # lr=None relative step, nothing factored (dims <= 16)
    (dict(), "big"),  # the 17x18 matrix and the 17x18x2x2 conv factored at the default size
    (dict(min_dim_size_to_factor=1), "small"),
    (dict(min_dim_size_to_factor=1, warmup_init=True), "small"),
    (dict(min_dim_size_to_factor=1, scale_parameter=False), "small"),
    (dict(lr=0.01, min_dim_size_to_factor=1), "small"),
    (dict(min_dim_size_to_factor=1, betas=(0.9, 0.999), weight_decay=0.1), "small"),
    (dict(min_dim_size_to_factor=1, betas=(0.8, 0.999), caution=True), "small"),
    (dict(lr=0.02, betas=(0.9, 0.999), caution=True, weight_decay=0.05), "big"),
    (dict(min_dim_size_to_factor=1, clip_threshold=0.5, decay_rate=-0.5, eps=1e-20, eps_scale=0.3), "small"),
]

ADAHESSIAN_CASES = [
    dict(),
    dict(lr=0.05, hessian_power=0.5),
    dict(lr=0.05, weight_decay=0.01, betas=(0.8, 0.99)),
    dict(lr=0.05, update_each=2),
    dict(lr=0.05, n_samples=2),
    dict(lr=0.05, avg_conv_kernel=True),
    dict(lr=0.05, update_each=3, n_samples=2, avg_conv_kernel=True, weight_decay=0.01, eps=1e-6),
]

# the cases whose state_dict after step MID is kept too (checkpoint loading tests)
KEEP_MID = {"madgrad": (0, 4), "adafactor": (6, 8), "adahessian": (3, 6)}


def main() -> None:
    torch.set_default_dtype(torch.float32)  # timm's Rademacher vectors come out in the default dtype
    out: dict = {"steps": STEPS, "mid": MID, "signatures": {}}
    for name in ("MADGRAD", "Adafactor", "Adahessian"):
        out["signatures"][name] = str(inspect.signature(getattr(timm_optim, name)))
    shapes = {"small": SMALL, "big": BIG}
    out["shapes"] = {k: {n: list(s) for n, s in v.items()} for k, v in shapes.items()}
    out["init"] = {k: _params(v, 1 + i) for i, (k, v) in enumerate(shapes.items())}
    out["grads"] = {k: torch.stack([_flat(list(g.values())) for g in _grads(v, 11 + i)])
                    for i, (k, v) in enumerate(shapes.items())}
    out["madgrad"] = [run_fixed(timm_optim.MADGRAD, kw, SMALL, out["init"]["small"], out["grads"]["small"],
                                i in KEEP_MID["madgrad"]) for i, kw in enumerate(MADGRAD_CASES)]
    out["adafactor"] = []
    for i, (kw, which) in enumerate(ADAFACTOR_CASES):
        case = run_fixed(timm_optim.Adafactor, kw, shapes[which], out["init"][which], out["grads"][which],
                         i in KEEP_MID["adafactor"])
        case["shapes"] = which
        out["adafactor"].append(case)
    gen = torch.Generator().manual_seed(21)
    out["ah_init"] = _params(AH_SHAPES, 31)
    out["ah_x"] = [torch.randn(2, 2, 5, 5, generator=gen, dtype=DT) for _ in range(STEPS)]
    out["adahessian"] = [run_adahessian(kw, out["ah_init"], out["ah_x"], i in KEEP_MID["adahessian"])
                         for i, kw in enumerate(ADAHESSIAN_CASES)]
    # timm's factory bindings of these classes (name -> (class name, bound defaults))
    out["registry"] = {}
    for name in ("madgrad", "madgradw", "adafactor", "cadafactor", "adahessian"):
        info = timm_optim.get_optimizer_info(name)
        out["registry"][name] = {"cls": info.opt_class.__name__, "defaults": dict(info.defaults or {}),
                                 "has_betas": info.has_betas, "has_momentum": info.has_momentum,
                                 "has_eps": info.has_eps, "second_order": info.second_order}
    torch.save(out, "timm_misc.pt")


if __name__ == "__main__":
    main()
