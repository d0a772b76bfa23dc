"""Record timm 1.0.31's Kron (PSGD) trajectories into ``timm_kron.pt``.

Run from ``tests/reference``: ``python generate_timm_kron.py``. Uses the real ``timm.optim``
through ``timm_shim`` (the project and its tests never import timm). Params, gradients
and (unless a case sets ``precond_dtype``/``mu_dtype``) all of timm's state are float64;
timm's triangular solves run in float32 whatever the dtype.

timm wraps its preconditioner helpers in ``torch.compile`` when dynamo is available; that
is switched off here (``kron.has_dynamo = False``, read when the optimizer is built), so
the reference is timm's eager math (no inductor re-association, no compile time).

Params: a 0-d scalar, a 1-D bias, a 3x5 matrix, a 2x3x2x2 conv weight and a 2x9 matrix
whose 9-long dim exceeds ``max_size_triangular=8`` (a diagonal factor). Gradients come from
a fixed generator (stored). The global torch seed is set to ``SEED`` just before each
case's first step: without ``deterministic``, timm draws its probe vectors from torch's
global generator. Case ``long`` runs ``LONG`` steps with timm's default update-probability
schedule, so the probability falls below 1 after step 500 and the update counter and the
Python generator's draws decide which steps update the preconditioner.

Also ``exprs``: timm's ``_init_Q_exprs`` (initial factors and einsum subscripts) for
several shapes, every ``memory_save_mode`` and three (max_size, min_ndim) settings.

Per case: the params after every step, timm's state_dict (including ``rng_state``) after
step ``MID`` (with torch's global generator state then, ``mid_torch_rng``) and at the end
(``torch.load(weights_only=True)``), and the steps at which the group's lr was changed
(``lr_at``); for ``long`` also the state after step ``RESUME`` with torch's generator
state (``resume``), from which the tests replay the annealed steps. Also ``str(inspect.signature(Kron))`` and timm's
factory bindings of kron, kronw, kronc.
"""

from __future__ import annotations

import inspect

import torch
from timm_shim import timm_optim

import timm.optim.kron as timm_kron  # noqa: E402  (timm_shim made timm importable)

DT = torch.float64
SEED = 1234
SHORT = 14
LONG = 620
MID = 6
RESUME = 500  # the long case's state is also kept here (the last step of the flat schedule)
EXPR_SHAPES = [(), (5,), (3, 5), (2, 3, 2, 2), (2, 9), (4, 4), (6, 3, 6), (1, 7), (9, 2, 9, 1)]
SHAPES = {"scalar": (), "bias": (4,), "matrix": (3, 5), "conv": (2, 3, 2, 2), "wide": (2, 9)}

CASES = {
    # timm's defaults but a larger lr and coupled weight decay; default probability schedule
    "long": (dict(lr=0.01, weight_decay=1e-3, max_size_triangular=8), LONG, {}),
    "kronw_stochastic_deterministic": (dict(lr=0.02, momentum=0.8, weight_decay=0.05, decoupled_decay=True,
                                            stochastic_weight_decay=True, deterministic=True,
                                            preconditioner_update_probability=0.4, max_size_triangular=8),
                                       SHORT, {}),
    # kronc: lr halved at step 5 (the corrected decay uses lr**2 / max_lr_snapshot)
    "kronc_lr_change": (dict(lr=0.03, weight_decay=0.05, decoupled_decay=True, corrected_weight_decay=True,
                             preconditioner_update_probability=0.5, max_size_triangular=8), SHORT, {5: 0.015}),
    "one_diag_flatten_grad_fit": (dict(lr=0.02, memory_save_mode="one_diag", flatten=True,
                                       momentum_into_precond_update=False, precond_lr=0.2,
                                       precond_init_scale=2.0, max_size_triangular=8), SHORT, {}),
    "smart_one_diag_float32_state": (dict(lr=0.02, memory_save_mode="smart_one_diag", mu_dtype=torch.float32,
                                          precond_dtype=torch.float32, weight_decay=0.01,
                                          max_size_triangular=8), SHORT, {}),
    "all_diag_min_ndim3": (dict(lr=0.02, memory_save_mode="all_diag", min_ndim_triangular=3, momentum=0.0,
                                preconditioner_update_probability=1.0), SHORT, {}),
    "min_ndim3_flatten_1_2": (dict(lr=0.02, min_ndim_triangular=3, flatten=True, flatten_start_dim=1,
                                   flatten_end_dim=2, max_size_triangular=8, deterministic=True), SHORT, {}),
}


def _params(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=gen, dtype=DT) * 0.5 for n, s in SHAPES.items()}


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Tensors flattened and concatenated in order (one row of ``traj`` / ``grads``)."""
    return torch.cat([t.detach().reshape(-1) for t in tensors]).clone()


def unflat(vec: torch.Tensor) -> list[torch.Tensor]:
    """A row of ``traj`` (or ``grads``) back as tensors of ``SHAPES`` (in order)."""
    out, i = [], 0
    for s in SHAPES.values():
        n = int(torch.Size(s).numel())
        out.append(vec[i:i + n].reshape(s))
        i += n
    return out


def _grads(steps: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for t in range(steps):
        scale = 1.0 + 0.5 * torch.rand((), generator=gen, dtype=DT)
        rows.append(_flat([torch.randn(s, generator=gen, dtype=DT) * scale for s in SHAPES.values()]))
    return torch.stack(rows)


def _state(opt: torch.optim.Optimizer) -> dict:
    sd = opt.state_dict()
    state = {}
    for i, s in sd["state"].items():
        state[int(i)] = {k: ([q.clone() for q in v] if isinstance(v, list)
                             else v.clone() if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    return {"state": state, "param_groups": groups, "rng_state": sd["rng_state"]}


def run(kwargs: dict, steps: int, lr_at: dict, init: dict, grads: torch.Tensor) -> dict:
    params = [torch.nn.Parameter(init[n].clone()) for n in SHAPES]
    opt = timm_kron.Kron(params, **kwargs)
    torch.manual_seed(SEED)
    traj, mid = [], None
    for t in range(steps):
        if t in lr_at:
            opt.param_groups[0]["lr"] = lr_at[t]
        for p, g in zip(params, unflat(grads[t])):
            p.grad = g.clone()
        opt.step()
        traj.append(_flat(params))
        if t + 1 == MID:
            mid = _state(opt)
            mid_torch_rng = torch.get_rng_state()
        if t + 1 == RESUME:
            resume = {**_state(opt), "torch_rng": torch.get_rng_state()}
    out = {"kwargs": kwargs, "steps": steps, "lr_at": lr_at, "traj": torch.stack(traj), "mid": mid,
           "mid_torch_rng": mid_torch_rng, "final": _state(opt)}
    if steps > RESUME:
        out["resume"] = resume
    return out


def main() -> None:
    timm_kron.has_dynamo = False  # timm's eager helpers (see the module docstring)
    out: dict = {"seed": SEED, "mid": MID, "shapes": {n: list(s) for n, s in SHAPES.items()},
                 "signature": str(inspect.signature(timm_kron.Kron))}
    out["init"] = _params(3)
    out["grads"] = _grads(LONG, 5)
    out["cases"] = {name: run(kw, steps, lr_at, out["init"], out["grads"])
                    for name, (kw, steps, lr_at) in CASES.items()}
    # the preconditioner's layout per shape and mode: the factors' shapes and the einsum subscripts
    out["exprs"] = []
    for shape in EXPR_SHAPES:
        for mode in (None, "one_diag", "smart_one_diag", "all_diag"):
            for max_size, min_ndim in ((8, 2), (2048, 1), (4, 3)):
                q, (expr_a, expr_gs, expr_p) = timm_kron._init_Q_exprs(
                    torch.zeros(shape, dtype=DT), 2.0, max_size, min_ndim, mode)
                out["exprs"].append({"shape": list(shape), "mode": mode, "max_size": max_size,
                                     "min_ndim": min_ndim, "Q": [t.clone() for t in q], "exprA": expr_a,
                                     "exprGs": list(expr_gs), "exprP": expr_p})
    # the schedule itself over the steps where it changes
    ns = list(range(0, 4200, 7))
    out["schedule"] = {"n": ns, "prob": torch.stack([timm_kron.precond_update_prob_schedule(n) for n in ns])}
    out["registry"] = {}
    for name in ("kron", "kronw", "kronc"):
        info = timm_optim.get_optimizer_info(name)
        out["registry"][name] = {"cls": info.opt_class.__name__, "defaults": dict(info.defaults or {})}
    torch.save(out, "timm_kron.pt")


if __name__ == "__main__":
    main()
