"""Record timm 1.0.31's Adan, Adopt, NAdamW and SGDW trajectories into ``timm_adan_adopt.pt``.

Run from ``tests/reference``: ``python generate_timm_adan_adopt.py``. Uses the real
``timm.optim`` through ``timm_shim`` (the project and its tests never import timm). On CPU
timm resolves ``foreach=None`` to its single-tensor path (the reference path); every case
passes ``foreach=False`` anyway, so the recording does not depend on the device.

Everything is float64. Params: a 0-d scalar, a 1-D bias, a 2-D matrix and a 4-D conv
weight, stepped on fixed gradients (a fixed generator, stored too) for ``STEPS`` steps;
the bias has no gradient at steps 0 and 3 (a param whose state starts late: Adopt's
per-param first step, Adan's group step and stale previous gradient), the matrix has an
exactly zero gradient entry at step 0 and the bias one at step 1. Cases with ``set_lr``
construct the optimizer with the peak lr (timm's ``max_lr_snapshot``) and then set every
group's lr to ``set_lr`` before the first step, so corrected weight decay
(``lr**2 / max_lr``) differs from the plain one.

Per case: the params after every step, timm's state_dict after step ``MID`` and at the
end (loadable with ``torch.load(weights_only=True)``). Also the classes' signatures and
the registry's bindings of every name that builds them.
"""

from __future__ import annotations

import inspect

import torch
from timm_shim import timm_optim

STEPS = 6
MID = 3
DT = torch.float64
SHAPES = {"scalar": (), "bias": (4,), "matrix": (3, 5), "conv": (3, 4, 2, 2)}
NO_GRAD = {"bias": (0, 3)}  # param -> steps without a gradient


def _init() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return {n: torch.randn(s, generator=gen, dtype=DT) * 0.5 for n, s in SHAPES.items()}


def _grads() -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(17)
    out = [{n: torch.randn(s, generator=gen, dtype=DT) * (1.0 + 0.3 * t) for n, s in SHAPES.items()}
           for t in range(STEPS)]
    out[0]["matrix"][1, 2] = 0.0  # exactly zero gradient entries
    out[1]["bias"][1] = 0.0
    return out


def _state(opt: torch.optim.Optimizer) -> dict:
    sd = opt.state_dict()
    state = {int(i): {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
             for i, s in sd["state"].items()}
    groups = [{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return {"state": state, "param_groups": groups}


def run(cls, kwargs: dict, set_lr, init: dict, grads: list) -> dict:
    params = [torch.nn.Parameter(init[n].clone()) for n in SHAPES]
    opt = cls(params, **kwargs, foreach=False)
    if set_lr is not None:
        for group in opt.param_groups:
            group["lr"] = set_lr
    traj, mid = [], None
    for t in range(STEPS):
        for (name, p) in zip(SHAPES, params):
            p.grad = None if t in NO_GRAD.get(name, ()) else grads[t][name].clone()
        opt.step()
        traj.append(torch.cat([p.detach().reshape(-1) for p in params]).clone())
        if t + 1 == MID:
            mid = _state(opt)
    return {"kwargs": kwargs, "set_lr": set_lr, "traj": torch.stack(traj), "mid": mid, "final": _state(opt)}


# (kwargs, set_lr)
CASES = {
    "Adan": [
        (dict(lr=0.05), None),
        (dict(lr=0.05, weight_decay=0.1), None),  # proximal decay
        (dict(lr=0.05, weight_decay=0.1, no_prox=True), None),
        (dict(lr=0.05, weight_decay=0.05, caution=True), None),
        (dict(lr=0.05, betas=(0.9, 0.8, 0.95), eps=1e-6, weight_decay=0.05, no_prox=True, caution=True), None),
    ],
    "Adopt": [
        (dict(lr=0.05), None),
        (dict(lr=0.05, clip_exp=None), None),
        (dict(lr=0.05, weight_decay=0.1), None),  # coupled decay
        (dict(lr=0.05, weight_decay=0.1, decoupled=True), None),
        (dict(lr=0.1, weight_decay=0.1, decoupled=True, corrected_weight_decay=True), 0.04),
        (dict(lr=0.05, betas=(0.8, 0.99), eps=1e-3, clip_exp=0.5, caution=True, maximize=True), None),
        (dict(lr=0.1, weight_decay=0.05, decoupled=True, corrected_weight_decay=True, caution=True), 0.03),
    ],
    "NAdamW": [
        (dict(lr=0.05), None),
        (dict(lr=0.05, weight_decay=0.1, caution=True), None),
        (dict(lr=0.1, weight_decay=0.1, corrected_weight_decay=True), 0.04),
        (dict(lr=0.05, maximize=True, clipping_threshold=0.5), None),
        (dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.0, caution=True, maximize=True,
              clipping_threshold=1.0), None),
    ],
    "SGDW": [
        (dict(lr=0.05), None),
        (dict(lr=0.05, momentum=0.9, weight_decay=0.1), None),
        (dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1), None),
        (dict(lr=0.05, momentum=0.9, dampening=0.3, caution=True), None),
        (dict(lr=0.05, momentum=0.9, nesterov=True, caution=True, maximize=True), None),
        (dict(lr=0.1, momentum=0.8, weight_decay=0.1, corrected_weight_decay=True), 0.04),
        (dict(lr=0.05, momentum=0.0, weight_decay=0.1, caution=True), None),  # no caution without momentum
    ],
}

REGISTRY_NAMES = ["adan", "adanw", "cadan", "cadanw", "adopt", "adoptw", "adoptc", "cadopt", "cadoptw", "cadoptc",
                  "nadamw", "nadamc", "cnadamw", "cnadamc", "sgdw", "sgdc", "csgdw", "csgdc", "nesterovw"]


def main() -> None:
    torch.set_default_dtype(torch.float32)  # timm's float step tensors come out in the default dtype
    init, grads = _init(), _grads()
    out: dict = {"steps": STEPS, "mid": MID, "shapes": {n: list(s) for n, s in SHAPES.items()},
                 "no_grad": {n: list(v) for n, v in NO_GRAD.items()}, "init": init, "grads": grads,
                 "signatures": {}, "cases": {}, "registry": {}}
    for name, cases in CASES.items():
        cls = getattr(timm_optim, name)
        out["signatures"][name] = str(inspect.signature(cls))
        out["cases"][name] = [run(cls, kw, set_lr, init, grads) for kw, set_lr in cases]
    for name in REGISTRY_NAMES:
        info = timm_optim.get_optimizer_info(name)
        out["registry"][name] = {"cls": info.opt_class.__name__, "defaults": dict(info.defaults or {}),
                                 "has_betas": info.has_betas, "num_betas": info.num_betas,
                                 "has_momentum": info.has_momentum, "has_eps": info.has_eps}
    # what create_optimizer_v2 builds for each name (class, and the group's options)
    model = torch.nn.Linear(3, 2)
    out["created"] = {}
    for name in REGISTRY_NAMES:
        opt = timm_optim.create_optimizer_v2(model, name, lr=0.01, weight_decay=0.05)
        group = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
        out["created"][name] = {"cls": type(opt).__name__, "group": group}
    torch.save(out, "timm_adan_adopt.pt")


if __name__ == "__main__":
    main()
