"""torch.func through the pure transforms: hypergradients, vmap, jacrev."""

from __future__ import annotations

import pytest
import torch

import functional_optim as fo

DT = torch.float64


def _problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 4, generator=gen, dtype=DT)
    y = x @ torch.randn(4, generator=gen, dtype=DT) + 0.1 * torch.randn(32, generator=gen, dtype=DT)
    xv = torch.randn(16, 4, generator=gen, dtype=DT)
    yv = xv @ torch.randn(4, generator=gen, dtype=DT)
    params = {"w": torch.randn(4, generator=gen, dtype=DT) * 0.1, "b": torch.zeros((), dtype=DT)}
    return x, y, xv, yv, params


def _loss(params, x, y):
    return ((x @ params["w"] + params["b"] - y) ** 2).mean()


def _unrolled_val_loss(make_opt, lr, params, steps=5):
    x, y, xv, yv, _ = _problem()
    opt = make_opt(lr)
    state = opt.init(params)
    for _ in range(steps):
        grads = torch.func.grad(_loss)(params, x, y)
        updates, state = opt.update(grads, state, params)
        params = fo.apply_updates(params, updates)
    return _loss(params, xv, yv)


OPTS = {"sgd_momentum": lambda lr: fo.sgd(lr=lr, momentum=0.9),
        "adam": lambda lr: fo.adam(lr=lr)}


@pytest.mark.parametrize("name", list(OPTS))
def test_hypergradient_wrt_lr_matches_finite_differences(name):
    params = _problem()[4]
    lr = torch.tensor(0.05, dtype=DT)
    grad = torch.func.grad(lambda lr: _unrolled_val_loss(OPTS[name], lr, params))(lr)
    h = 1e-6
    fd = (_unrolled_val_loss(OPTS[name], lr + h, params) - _unrolled_val_loss(OPTS[name], lr - h, params)) / (2 * h)
    assert abs(grad - fd) / abs(fd) <= 1e-6


@pytest.mark.parametrize("name", list(OPTS))
def test_gradient_wrt_initial_params_matches_finite_differences(name):
    params = _problem()[4]
    lr = torch.tensor(0.05, dtype=DT)
    grads = torch.func.grad(lambda p: _unrolled_val_loss(OPTS[name], lr, p))(params)
    h = 1e-6
    for key in params:
        flat = params[key].reshape(-1)
        for i in range(flat.numel()):
            plus = {k: v.clone() for k, v in params.items()}
            minus = {k: v.clone() for k, v in params.items()}
            plus[key].view(-1)[i] += h
            minus[key].view(-1)[i] -= h
            fd = (_unrolled_val_loss(OPTS[name], lr, plus) - _unrolled_val_loss(OPTS[name], lr, minus)) / (2 * h)
            g = grads[key].reshape(-1)[i]
            assert abs(g - fd) <= 1e-6 * max(abs(fd), 1e-3)


# vmap over a batch of problems against a loop: for every optimizer and transform in
# tests/test_conformance.py (test_vmap_over_problems_equals_loop)


def test_jacrev_of_an_adam_step_matches_autograd():
    opt = fo.adam(lr=0.1)
    params = {"w": torch.randn(3, dtype=DT)}
    state = opt.init(params)
    _, state = opt.update({"w": torch.randn(3, dtype=DT)}, state, params)  # a non-trivial state

    def step(g):
        u, _ = opt.update({"w": g}, state, params)
        return u["w"]

    g = torch.randn(3, dtype=DT)
    jac = torch.func.jacrev(step)(g)
    ref = torch.autograd.functional.jacobian(step, g)
    torch.testing.assert_close(jac, ref, rtol=1e-12, atol=1e-14)
    assert jac.abs().sum() > 0
