"""Record timm 1.0.31's Muon and AdafactorBigVision trajectories into ``timm_muon_adafactorbv.pt``.

Run from ``tests/reference``: ``python generate_timm_muon_adafactorbv.py``. Uses the real
``timm.optim`` through ``timm_shim`` (the project and its tests never import timm).

Params are float64 and step on fixed gradients (a fixed generator, stored too), so the
bfloat16 parts (Muon's Newton-Schulz iteration, AdafactorBigVision's momentum) see the
same inputs on both sides and can be compared bit for bit. After step ``MID`` every
group's ``lr`` is halved (so corrected weight decay's ``lr / max_lr`` is not 1). Per case:
the params after every step and timm's state_dict after step ``MID`` and at the end
(loadable with ``torch.load(weights_only=True)``). Also timm's Newton-Schulz outputs on a
few inputs, its signatures and its registry bindings.
"""

from __future__ import annotations

import inspect

import torch
from timm_shim import timm_optim

from timm.optim import muon as timm_muon

STEPS = 6
MID = 3
DT = torch.float64

# Muon: a bias and a depthwise conv (AdamW fallback), a tall and a wide matrix, a conv
# weight (flattened or batched over its 3x3 positions), a matrix too thin for Muon
# (small: CPU bfloat16 matrix products of more than ~8 rows are slow, and the tests rerun them)
MUON_SHAPES = {"bias": (5,), "tall": (12, 8), "wide": (6, 24), "conv": (8, 4, 2, 2), "dw": (4, 1, 3, 3),
               "thin": (3, 40)}
# AdafactorBigVision: a bias, a matrix factored over (1, 0), a conv factored over its
# channels, a matrix left unfactored at the default size 16
BV_SHAPES = {"bias": (5,), "matrix": (20, 17), "conv": (18, 16, 2, 2), "small": (3, 20)}


def _params(shapes: dict[str, tuple], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=gen, dtype=DT) * 0.5 for n, s in shapes.items()}


def _grads(shapes: dict[str, tuple], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for t in range(STEPS):
        g = [torch.randn(s, generator=gen, dtype=DT) * (1.0 + 0.3 * t) for s in shapes.values()]
        g[0].view(-1)[1] = 0.0  # an exactly zero gradient entry
        rows.append(_flat(g))
    return torch.stack(rows)


def _flat(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params]).clone()


def unflat(vec: torch.Tensor, shapes: dict[str, tuple]) -> list[torch.Tensor]:
    out, i = [], 0
    for s in shapes.values():
        n = int(torch.Size(s).numel())
        out.append(vec[i:i + n].reshape(s))
        i += n
    return out


def _clone(v):
    return v.clone() if isinstance(v, torch.Tensor) else v


def _state(opt: torch.optim.Optimizer) -> dict:
    sd = opt.state_dict()
    state = {int(i): {k: _clone(v) for k, v in s.items()} for i, s in sd["state"].items()}
    groups = [{k: _clone(v) for k, v in g.items()} for g in sd["param_groups"]]
    return {"state": state, "param_groups": groups}


def run(cls, kwargs: dict, shapes: dict, init: dict, grads: torch.Tensor, groups=None, keep_mid=False) -> dict:
    """``groups``: None (one group) or a list of (names, extra group keys); the state_dict
    after step MID is kept with ``keep_mid``."""
    params = {n: torch.nn.Parameter(init[n].clone()) for n in shapes}
    if groups is None:
        opt = cls(list(params.values()), **kwargs)
    else:
        opt = cls([{"params": [params[n] for n in names], **extra} for names, extra in groups], **kwargs)
    traj, mid = [], None
    for t in range(STEPS):
        for p, g in zip(params.values(), unflat(grads[t], shapes)):
            p.grad = g.clone()
        opt.step()
        traj.append(_flat(list(params.values())))
        if t + 1 == MID:
            mid = _state(opt) if keep_mid else None
            for group in opt.param_groups:
                group["lr"] = group["lr"] * 0.5
    return {"kwargs": kwargs, "groups": groups, "traj": torch.stack(traj), "mid": mid, "final": _state(opt)}


_ALL_MUON = list(MUON_SHAPES)
MUON_CASES = [
    (dict(), None),
    (dict(nesterov=True, weight_decay=0.1), None),  # nmuon: NAdamW fallback
    (dict(algo="adamuon", lr=0.01), None),
    (dict(algo="adamuon", nesterov=True, lr=0.01, weight_decay=0.05), None),  # nadamuon
    (dict(algo="adamuon", lr=0.01, adjust_lr_fn="rms_to_rms", conv_mode="batched"), None),
    (dict(algo="adamuon", lr=0.01, adjust_lr_fn=None, betas=(0.8, 0.9)), None),
    (dict(algo="adamuon", lr=0.01, adjust_lr_fn="rsqrt_in", conv_mode="batched", normalize_spatial=False), None),
    (dict(conv_mode="batched", adjust_lr_fn="original"), None),
    (dict(conv_mode="batched", normalize_spatial=False, adjust_lr_fn="rms_to_rms"), None),
    (dict(adjust_lr_fn=None, ns_coefficients="original", momentum=0.9, fallback_lr_scale=0.5), None),
    (dict(ns_coefficients="polar_express", ns_steps=8, safety_factor=1.01, scale_eps=True, eps=1e-3), None),
    (dict(ns_coefficients=(3.0, -3.2, 1.2), ns_steps=3, eps=1e-2, nesterov=True), None),
    (dict(lr=0.01, weight_decay=0.1),
     [(["bias", "tall", "dw"], {}), (["wide", "thin"], {"use_fallback": True}),
      (["conv"], {"use_muon": False, "lr": 0.003})]),
]

BV_CASES = [
    dict(),
    dict(lr=0.05, weight_decay=0.1),
    dict(lr=0.05, caution=True, clipping_threshold=0.5),
    dict(lr=0.05, weight_decay=0.2, corrected_weight_decay=True),
    dict(lr=0.05, weight_decay=0.01, unscaled_wd=True),
    dict(lr=0.05, weight_decay=0.01, unscaled_wd=True, corrected_weight_decay=True, caution=True),
    dict(lr=0.1, momentum=None, decay_offset=2, beta2_cap=0.9, eps=1e-20, caution=True),
    dict(lr=0.1, momentum_dtype="float32", min_dim_size_to_factor=4, decay_rate=0.5, momentum=0.8),
]


# the cases whose state_dict after step MID is kept too (checkpoint loading tests)
KEEP_MID = {"muon": (0, 3, 12), "bv": (0, 5)}


def ns_cases() -> list[dict]:
    """timm's ``zeropower_via_newtonschulz`` on fixed float64 inputs (it iterates in bfloat16)."""
    gen = torch.Generator().manual_seed(41)
    specs = [
        ((24, 16), "quintic", 5, 1e-7, 1.0, False),
        ((8, 40), "quintic", 5, 1e-7, 1.0, False),
        ((9, 16, 8), "quintic", 5, 1e-7, 1.0, False),
        ((16, 32), "original", 5, 1e-7, 1.0, False),
        ((30, 20), "polar_express", 8, 1e-3, 1.01, True),
        ((4, 20, 12), "polar_express_safer", 10, 1e-7, 1.02, False),
    ]
    out = []
    for shape, coeffs, steps, eps, safety, scale_eps in specs:
        g = torch.randn(shape, generator=gen, dtype=DT)
        seq = timm_muon.resolve_ns_coefficients(coeffs, timm_muon._COEFFICIENTS)
        x = timm_muon.zeropower_via_newtonschulz(g, steps, seq, eps=eps, safety_factor=safety, scale_eps=scale_eps)
        out.append({"g": g, "coefficients": coeffs, "steps": steps, "eps": eps, "safety_factor": safety,
                    "scale_eps": scale_eps, "out": x.clone()})
    return out


def main() -> None:
    torch.set_default_dtype(torch.float32)
    out: dict = {"steps": STEPS, "mid": MID, "signatures": {}}
    for name in ("Muon", "AdafactorBigVision"):
        out["signatures"][name] = str(inspect.signature(getattr(timm_optim, name)))
    out["shapes"] = {"muon": {n: list(s) for n, s in MUON_SHAPES.items()},
                     "bv": {n: list(s) for n, s in BV_SHAPES.items()}}
    out["init"] = {"muon": _params(MUON_SHAPES, 1), "bv": _params(BV_SHAPES, 2)}
    out["grads"] = {"muon": _grads(MUON_SHAPES, 11), "bv": _grads(BV_SHAPES, 12)}
    out["muon"] = [run(timm_optim.Muon, kw, MUON_SHAPES, out["init"]["muon"], out["grads"]["muon"], groups,
                       i in KEEP_MID["muon"]) for i, (kw, groups) in enumerate(MUON_CASES)]
    out["bv"] = [run(timm_optim.AdafactorBigVision, kw, BV_SHAPES, out["init"]["bv"], out["grads"]["bv"],
                     keep_mid=i in KEEP_MID["bv"]) for i, kw in enumerate(BV_CASES)]
    out["ns"] = ns_cases()
    out["coefficients"] = {k: [list(c) for c in v] for k, v in timm_muon._COEFFICIENTS.items()}
    out["registry"] = {}
    for name in ("muon", "nmuon", "adamuon", "nadamuon", "adafactorbv", "cadafactorbv", "adafactorbvc",
                 "cadafactorbvc"):
        info = timm_optim.get_optimizer_info(name)
        out["registry"][name] = {"cls": info.opt_class.__name__, "defaults": dict(info.defaults or {})}
    torch.save(out, "timm_muon_adafactorbv.pt")


if __name__ == "__main__":
    main()
