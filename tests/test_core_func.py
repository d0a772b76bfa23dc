"""torch.func through the pure transforms: hypergradients, vmap, jacrev."""

from __future__ import annotations

import optree
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


VMAP_OPTS = {
    "sgd_momentum": lambda: fo.sgd(lr=0.05, momentum=0.9, dampening=0.1),
    "adam": lambda: fo.adam(lr=0.05, amsgrad=True),
    "clip_chain": lambda: fo.chain(fo.clip_by_global_norm(1.0), fo.sgd(lr=0.05, momentum=0.9)),
}


def _stack(trees):
    return optree.tree_map(lambda *xs: torch.stack(xs), *trees)


@pytest.mark.parametrize("name", list(VMAP_OPTS))
def test_vmap_over_problems_equals_loop(name):
    gen = torch.Generator().manual_seed(3)
    batch, steps = 8, 4
    opt = VMAP_OPTS[name]()
    params = [{"w": torch.randn(5, 3, generator=gen, dtype=DT), "b": torch.randn(3, generator=gen, dtype=DT)}
              for _ in range(batch)]
    grads = [[{"w": 3 * torch.randn(5, 3, generator=gen, dtype=DT), "b": torch.randn(3, generator=gen, dtype=DT)}
              for _ in range(batch)] for _ in range(steps)]

    def one_step(p, g, s):
        u, s = opt.update(g, s, p)
        return fo.apply_updates(p, u), s

    looped = []
    for i in range(batch):
        p, s = params[i], opt.init(params[i])
        for t in range(steps):
            p, s = one_step(p, grads[t][i], s)
        looped.append(p)

    p = _stack(params)
    s = _stack([opt.init(q) for q in params])
    for t in range(steps):
        p, s = torch.func.vmap(one_step)(p, _stack(grads[t]), s)
    for i in range(batch):
        for key in p:
            torch.testing.assert_close(p[key][i], looped[i][key], rtol=1e-12, atol=1e-14)


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
