"""The adapter's optimizers follow torch.optim's trajectories step for step.

Drop-in ``SGD``/``Adam``/``AdamW`` against torch's classes, and ``FunctionalOptimizer``
with a library factory (``fo.adamw``), a user factory and a fixed transform: float64
params of several shapes in three param groups with different hyperparameters, one
param without a gradient on every third step, eager (``compile=False``) and compiled
(``compile=True``, flat buffers) engines. Also float32 compiled, the per-param engine a
compiled group falls back to, and what ``step`` does (and does not) do to ``p.grad``.
"""

from __future__ import annotations

import pytest
import torch

import adapters
import functional_optim as fo
from adapter_harness import (GROUPS, SOMETIMES, groups, leaves, make_grads, make_params,
                             max_rel_diff, set_grads, train)

STEPS = 30
TOL = 1e-10  # float64, relative to the largest param entry

CASES = {
    "sgd-momentum": (adapters.SGD, torch.optim.SGD, dict(lr=1e-2, momentum=0.9), [
        dict(lr=0.1), dict(weight_decay=0.1, momentum=0.5, dampening=0.2),
        dict(nesterov=True, maximize=True)]),
    "sgd-plain": (adapters.SGD, torch.optim.SGD, dict(lr=1e-2), [
        dict(lr=0.1), dict(weight_decay=0.1), dict(maximize=True, momentum=0.8)]),
    "adam": (adapters.Adam, torch.optim.Adam, dict(lr=1e-2), [
        dict(lr=0.1, betas=(0.8, 0.99)), dict(weight_decay=0.1, amsgrad=True),
        dict(eps=1e-3, maximize=True, weight_decay=0.05, decoupled_weight_decay=True)]),
    "adamw": (adapters.AdamW, torch.optim.AdamW, dict(lr=1e-2), [
        dict(lr=0.1, weight_decay=0.0), dict(weight_decay=0.2, betas=(0.5, 0.9)),
        dict(amsgrad=True, eps=1e-4)]),
}


def torch_run(cls, defaults, overrides, grads, dtype=torch.float64):
    params = leaves(make_params(dtype))
    return train(cls(groups(params, overrides), **defaults), params, grads)


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("name", list(CASES))
def test_drop_in_matches_torch(name, compile):
    ours_cls, torch_cls, defaults, overrides = CASES[name]
    grads = make_grads(STEPS)
    ref = torch_run(torch_cls, defaults, overrides, grads)
    params = leaves(make_params())
    opt = ours_cls(groups(params, overrides), **defaults, compile=compile)
    assert max_rel_diff(train(opt, params, grads), ref) <= TOL
    if compile:  # every group stayed on the flat-buffer engine
        assert [rt.engine.kind for rt in opt._groups] == ["flat"] * len(opt._groups)


def test_compiled_float32_matches_torch():
    # float32: the fused compiled update differs from torch's for-loop in rounding only;
    # measured max relative difference over 30 steps 5.9e-7 (our eager step: the same
    # 5.9e-7, from the order of Adam's scalar factors; compiled vs eager: 6e-8)
    _, _, defaults, overrides = CASES["adam"]
    grads = make_grads(STEPS, torch.float32)
    ref = torch_run(torch.optim.Adam, defaults, overrides, grads, torch.float32)
    params = leaves(make_params(torch.float32))
    ours = train(adapters.Adam(groups(params, overrides), **defaults, compile=True), params, grads)
    assert max_rel_diff(ours, ref) <= 5e-6


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_compiled_group_with_missing_grad_falls_back_per_param(compile):
    # the sometimes-None param shares a group: the flat engine cannot skip part of a
    # bucket, so the group moves to the per-param engine and still matches torch
    layout = [[0, 1, SOMETIMES], [2, 3]]
    overrides = [dict(lr=0.1), dict(weight_decay=0.1)]
    grads = make_grads(STEPS)
    params = leaves(make_params())
    ref = train(torch.optim.Adam(groups(params, overrides, layout), lr=1e-2), params, grads)
    params = leaves(make_params())
    opt = adapters.Adam(groups(params, overrides, layout), lr=1e-2, compile=compile)
    assert max_rel_diff(train(opt, params, grads), ref) <= TOL
    expected = ["compiled", "flat"] if compile else ["eager", "eager"]
    assert [rt.engine.kind for rt in opt._groups] == expected


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_factory_adamw_matches_torch(compile):
    overrides = [dict(lr=0.1), dict(weight_decay=0.3, betas=(0.7, 0.95)), dict(amsgrad=True)]
    grads = make_grads(STEPS)
    ref = torch_run(torch.optim.AdamW, dict(lr=1e-2), overrides, grads)
    params = leaves(make_params())
    opt = adapters.FunctionalOptimizer(groups(params, overrides), fo.adamw, lr=1e-2, compile=compile)
    assert opt.param_groups[1]["weight_decay"] == 0.3 and opt.param_groups[0]["weight_decay"] == 1e-2
    assert max_rel_diff(train(opt, params, grads), ref) <= TOL


def my_opt(lr=1e-3, clip=1.0):
    return fo.chain(fo.clip_by_global_norm(clip), fo.adam(lr=lr))


def functional_run(tx_per_group, grads, layout=GROUPS):
    """The pure transforms run by hand, one per group: the reference for any chain."""
    params = make_params()
    states = [tx.init([params[i] for i in idx]) for tx, idx in zip(tx_per_group, layout)]
    trajectory = []
    for g in grads:
        for gi, (tx, idx) in enumerate(zip(tx_per_group, layout)):
            ps = [params[i] for i in idx]
            updates, states[gi] = tx.update([g[i] for i in idx], states[gi], ps)
            for i, p in zip(idx, fo.apply_updates(ps, updates)):
                params[i] = p
        trajectory.append(list(params))
    return trajectory


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_user_factory_matches_its_functional_run(compile):
    overrides = [dict(lr=0.1, clip=0.5), dict(clip=100.0), dict()]
    grads = make_grads(STEPS)
    ref = functional_run([my_opt(0.1, 0.5), my_opt(1e-2, 100.0), my_opt(1e-2, 2.0)], grads)
    params = leaves(make_params())
    opt = adapters.FunctionalOptimizer(groups(params, overrides), my_opt, lr=1e-2, clip=2.0, compile=compile)
    assert [g["clip"] for g in opt.param_groups] == [0.5, 100.0, 2.0]
    assert max_rel_diff(train(opt, params, grads), ref) <= TOL
    # the clip is active in groups 0 and 2: the pre-clip norm is readable per param
    norms = [opt.state[p]["ClipByGlobalNormState.global_norm"] for p in params]
    assert norms[0] is norms[1] and norms[0].item() > 0.5


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_fixed_transform_matches_torch_sgd(compile):
    # a fixed GradientTransformation serves every group as is (no hyperparameters)
    grads = make_grads(STEPS)
    params = leaves(make_params())
    ref = train(torch.optim.SGD(groups(params, [{}, {}, {}]), lr=0.05, momentum=0.9), params, grads)
    params = leaves(make_params())
    tx = fo.chain(fo.trace(0.9), fo.scale(-0.05))
    opt = adapters.FunctionalOptimizer(groups(params, [{}, {}, {}]), tx, compile=compile)
    assert max_rel_diff(train(opt, params, grads), ref) <= TOL


GRAD_KEEPERS = {  # eager ones run the donating functional update (no fused kernel)
    "adam_compiled": lambda ps: adapters.Adam(ps, lr=0.1, compile=True),
    "adam_functional": lambda ps: adapters.Adam(ps, lr=0.1, fused=False),
    "rmsprop_centered_momentum": lambda ps: adapters.RMSprop(ps, lr=0.1, centered=True, momentum=0.9),
    "adadelta": lambda ps: adapters.Adadelta(ps, weight_decay=0.1),
    "nadam": lambda ps: adapters.NAdam(ps, lr=0.1, decoupled_weight_decay=True, weight_decay=0.1),
    "asgd": lambda ps: adapters.ASGD(ps, lr=0.1, t0=2),
    "rprop": lambda ps: adapters.Rprop(ps, lr=0.1),
    "clip_chain": lambda ps: adapters.FunctionalOptimizer(
        ps, lambda lr: fo.chain(fo.clip_by_global_norm(0.5), fo.adamw(lr)), lr=0.1),
}


@pytest.mark.parametrize("name", list(GRAD_KEEPERS))
def test_step_leaves_grads_unchanged(name):
    grads = make_grads(5, none_every=None)
    params = leaves(make_params())
    opt = GRAD_KEEPERS[name](groups(params, [{}, dict(weight_decay=0.1), {}]))
    for g in grads:
        set_grads(params, g)
        given = [p.grad for p in params]
        before = [p.grad.clone() for p in params]
        opt.step()
        for p, g_given, g_before in zip(params, given, before):
            assert torch.equal(g_given, g_before)  # the user's tensor, bitwise
            assert torch.equal(p.grad, g_before)  # p.grad (the flat engine's view: same values)


def test_donate_grads_same_trajectory():
    overrides = [dict(lr=0.1), dict(weight_decay=0.1, amsgrad=True), {}]
    grads = make_grads(STEPS)
    params = leaves(make_params())
    ref = train(adapters.Adam(groups(params, overrides), lr=1e-2, fused=False), params, grads)
    params = leaves(make_params())
    opt = adapters.FunctionalOptimizer(groups(params, overrides), fo.adam, lr=1e-2, donate_grads=True)
    ours = train(opt, params, grads)
    assert max_rel_diff(ours, ref) == 0.0
    # the donated grads were used as scratch space
    assert not torch.equal(params[2].grad, grads[-1][2])

