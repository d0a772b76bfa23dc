"""Record timm 1.0.31's Lion, LaProp and Mars trajectories into ``timm_lion_laprop_mars.pt``.

Run from ``tests/reference``: ``python generate_timm_lion_laprop_mars.py``. Uses the real
``timm.optim`` through ``timm_shim`` (the project and its tests never import timm). Params
and gradients are float64; the default dtype stays float32, as in a usual run, so LaProp's
second-moment bias correction (``exp_avg_lr_2``) is timm's float32 scalar.

Params: a 0-d scalar, a 1-D bias, a 2-D matrix and a 4-D conv weight, stepped on fixed
gradients (a fixed generator, stored too). ``bias[1]`` has an exactly zero gradient at
every step (Lion's sign of 0, LaProp's 0 / eps) and ``matrix[0, 0]`` at the first step.
A case may change the group's lr before given steps (``lrs``: the lr of every step),
which is what corrected weight decay (``lr**2 / max_lr``) and LaProp's lr average see.

Per case: the params after every step, timm's state_dict after step ``MID`` and at the
end (loadable with ``torch.load(weights_only=True)``). Also ``str(inspect.signature(cls))``.
"""

from __future__ import annotations

import inspect

import torch
from timm_shim import timm_optim

STEPS = 6
MID = 3
DT = torch.float64
SHAPES = {"scalar": (), "bias": (4,), "matrix": (3, 5), "conv": (3, 2, 2, 2)}


def _params(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=gen, dtype=DT) * 0.5 for n, s in SHAPES.items()}


def _grads(seed: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for t in range(STEPS):
        g = {n: torch.randn(s, generator=gen, dtype=DT) * (1.0 + 0.3 * t) for n, s in SHAPES.items()}
        g["bias"][1] = 0.0  # exactly zero at every step
        if t == 0:
            g["matrix"][0, 0] = 0.0
        out.append(g)
    return out


def _flat(params: list[torch.Tensor]) -> torch.Tensor:
    """The params after a step, flattened and concatenated in order (one row of ``traj``)."""
    return torch.cat([p.detach().reshape(-1) for p in params]).clone()


def unflat(vec: torch.Tensor) -> list[torch.Tensor]:
    """A row of ``traj`` (or ``grads``) back as tensors of ``SHAPES`` (in order)."""
    out, i = [], 0
    for s in SHAPES.values():
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


def run(cls, case: dict, init: dict, grads: torch.Tensor) -> dict:
    kwargs, lrs = case["kwargs"], case.get("lrs")
    params = [torch.nn.Parameter(init[n].clone()) for n in SHAPES]
    opt = cls(params, **kwargs)
    traj, mid = [], None
    for t in range(STEPS):
        if lrs is not None:
            opt.param_groups[0]["lr"] = lrs[t]
        for p, g in zip(params, unflat(grads[t])):
            p.grad = g.clone()
        opt.step()
        traj.append(_flat(params))
        if t + 1 == MID:
            mid = _state(opt)
    return {"kwargs": kwargs, "lrs": lrs, "traj": torch.stack(traj), "mid": mid, "final": _state(opt)}


_DROP = [0.02, 0.02, 0.015, 0.01, 0.005, 0.0025]  # an lr falling below the constructor's (max) lr

LION_CASES = [
    dict(kwargs=dict(lr=0.01)),
    dict(kwargs=dict(lr=0.01, betas=(0.8, 0.95), weight_decay=0.1)),
    dict(kwargs=dict(lr=0.01, weight_decay=0.1, caution=True)),
    dict(kwargs=dict(lr=0.02, weight_decay=0.5, corrected_weight_decay=True), lrs=_DROP),
    dict(kwargs=dict(lr=0.02, weight_decay=0.5, caution=True, corrected_weight_decay=True, maximize=True),
         lrs=_DROP),
    dict(kwargs=dict(lr=0.01, betas=(0.0, 0.5), maximize=True)),
]

LAPROP_CASES = [
    dict(kwargs=dict(lr=0.01)),
    dict(kwargs=dict(lr=0.01, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.1)),
    dict(kwargs=dict(lr=0.01, weight_decay=0.1, caution=True)),
    dict(kwargs=dict(lr=0.02, weight_decay=0.5), lrs=_DROP),  # LaProp's lr average follows the schedule
    dict(kwargs=dict(lr=0.02, weight_decay=0.5, corrected_weight_decay=True, caution=True), lrs=_DROP),
    dict(kwargs=dict(lr=0.02, betas=(0.5, 0.9)), lrs=[0.02, 0.0, 0.01, 0.01, 0.0, 0.02]),  # lr 0 steps
]

MARS_CASES = [
    dict(kwargs=dict(lr=0.01)),
    dict(kwargs=dict(lr=0.01, mars_type="lion")),
    dict(kwargs=dict(lr=0.01, optimize_1d=True, weight_decay=0.1)),
    dict(kwargs=dict(lr=0.01, caution=True, weight_decay=0.1)),
    dict(kwargs=dict(lr=0.01, mars_type="lion", caution=True, weight_decay=0.1)),
    dict(kwargs=dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1, gamma=0.1, lr_1d_factor=0.5,
                     betas_1d=(0.7, 0.9))),
    dict(kwargs=dict(lr=0.01, mars_type="lion", optimize_1d=True, caution=True, gamma=0.2)),
    dict(kwargs=dict(lr=0.02, gamma=0.05), lrs=_DROP),
]


def main() -> None:
    torch.set_default_dtype(torch.float32)
    out: dict = {"steps": STEPS, "mid": MID, "signatures": {}}
    for name in ("Lion", "LaProp", "Mars"):
        out["signatures"][name] = str(inspect.signature(getattr(timm_optim, name)))
    out["shapes"] = {n: list(s) for n, s in SHAPES.items()}
    out["init"] = _params(7)
    out["grads"] = torch.stack([_flat(list(g.values())) for g in _grads(17)])
    for key, cls, cases in (("lion", timm_optim.Lion, LION_CASES), ("laprop", timm_optim.LaProp, LAPROP_CASES),
                            ("mars", timm_optim.Mars, MARS_CASES)):
        out[key] = [run(cls, case, out["init"], out["grads"]) for case in cases]
    torch.save(out, "timm_lion_laprop_mars.pt")


if __name__ == "__main__":
    main()
