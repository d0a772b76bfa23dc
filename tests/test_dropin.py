"""Drop-in classes against torch.optim: trajectories and state_dict cross-loading.

Each case runs ours and torch's class side by side in float64 on several param groups
(scalar, 1-D, 2-D, 4-D params; one param without a gradient on some steps), then saves
each optimizer's state_dict, loads it into a fresh optimizer of the *other* library and
checks that 10 more steps stay identical.
"""

from __future__ import annotations

import io

import pytest
import torch

import adapters

TOL = 1e-10  # max relative difference in float64

CASES = [
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("SGD", dict(lr=0.05)),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.01)),
    ("Adam", dict(lr=0.01, maximize=True, decoupled_weight_decay=True, weight_decay=0.1)),
    ("AdamW", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.01)),
    ("RMSprop", dict(lr=0.01)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1)),
    ("Adadelta", dict(lr=1.0, rho=0.8, weight_decay=0.01)),
    ("Adamax", dict(lr=0.01, weight_decay=0.01)),
    ("NAdam", dict(lr=0.01, weight_decay=0.01, momentum_decay=0.01)),
    ("NAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
    ("RAdam", dict(lr=0.01, weight_decay=0.01)),
    ("RAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    ("ASGD", dict(lr=0.01, t0=5, lambd=1e-3, weight_decay=0.01)),
    ("Rprop", dict(lr=0.01, etas=(0.4, 1.3), step_sizes=(1e-5, 1.0), maximize=True)),
]
SHAPES = [(3, 4), (5,), (), (2, 3, 2, 2)]


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64)) for s in SHAPES]


def _groups(params: list[torch.nn.Parameter]) -> list[dict]:
    # the second group overrides lr, so per-group hyperparameters are exercised
    return [{"params": params[:2]}, {"params": params[2:], "lr": 0.02}]


def _grads(steps: int, seed: int = 1) -> list[list[torch.Tensor | None]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for step in range(steps):
        grads = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
        if step % 4 == 3:
            grads[1] = None
        out.append(grads)
    return out


def _run(opt: torch.optim.Optimizer, params: list[torch.Tensor], grads) -> None:
    for g in grads:
        for p, gi in zip(params, g):
            p.grad = None if gi is None else gi.clone()
        opt.step()


def _rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(((x - y).abs().max() / y.abs().max().clamp_min(1e-300)).item() for x, y in zip(a, b))


def _roundtrip(state_dict: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# every case eagerly; the compiled step for the first case of each elementwise core class
# (compile time: each compiled case takes tens of seconds cold)
_COMPILED = {n: kw for n, kw in reversed(CASES) if n in ("SGD", "Adam", "AdamW")}
RUNS = [(n, kw, False) for n, kw in CASES] + [(n, kw, True) for n, kw in _COMPILED.items()]


@pytest.mark.parametrize("name,kwargs,compile_step", RUNS,
                         ids=[f"{n}-{i}-{'compiled' if c else 'eager'}" for i, (n, _, c) in enumerate(RUNS)])
def test_trajectory_and_cross_loading(name, kwargs, compile_step):
    ours_cls, torch_cls = getattr(adapters, name), getattr(torch.optim, name)
    grads = _grads(40)
    ours_p, ref_p = _params(), _params()
    ours = ours_cls(_groups(ours_p), compile=compile_step, **kwargs)
    ref = torch_cls(_groups(ref_p), **kwargs)
    _run(ours, ours_p, grads[:30])
    _run(ref, ref_p, grads[:30])
    assert _rel(ours_p, ref_p) <= TOL

    # ours -> torch and torch -> ours, through torch.save / torch.load(weights_only=True)
    to_torch_p = [p.detach().clone().requires_grad_() for p in ours_p]
    to_torch = torch_cls(_groups(to_torch_p), **kwargs)
    to_torch.load_state_dict(_roundtrip(ours.state_dict()))
    to_ours_p = [p.detach().clone().requires_grad_() for p in ref_p]
    to_ours = ours_cls(_groups(to_ours_p), compile=compile_step, **kwargs)
    to_ours.load_state_dict(_roundtrip(ref.state_dict()))
    for opt, params in ((ours, ours_p), (ref, ref_p), (to_torch, to_torch_p), (to_ours, to_ours_p)):
        _run(opt, params, grads[30:])
    assert _rel(to_torch_p, ref_p) <= TOL
    assert _rel(to_ours_p, ref_p) <= TOL
    assert _rel(ours_p, ref_p) <= TOL
