"""snapshot / monitor / measure_with_ema: the pre-clip gradient norm as clip_grad_norm_
returns it, EMA measurements against the rule written out here, donation, errors."""

from __future__ import annotations

import optree
import pytest
import torch

import functional_optim as fo
from functional_optim.wrappers.monitoring import (MonitorState, SnapshotState, measure_with_ema, monitor,
                                                  snapshot)
from parity import make_grads, make_params, max_rel_diff
from compile_counting import CountingBackend

STEPS = 30


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pre_clip_norm_equals_clip_grad_norm_and_trajectory_matches_torch(dtype):
    params = make_params(dtype)
    grads = [{n: None if g is None else 3.0 * g for n, g in step.items()}
             for step in make_grads(params, STEPS)]  # norms around 15: clipping is active
    tx = fo.chain(snapshot("grad_norm", fo.tree.global_norm), fo.clip_by_global_norm(1.0), fo.adam(1e-3))
    state, p = tx.init(params), params
    # torch's params in the order of the tree's leaves (optree sorts dict keys): the norms
    # are then summed in the same order
    leaves = {n: params[n].clone().requires_grad_(True) for n in sorted(params)}
    opt = torch.optim.Adam(list(leaves.values()), lr=1e-3)
    ours, ref = [], []
    for g in grads:
        for n, leaf in leaves.items():
            leaf.grad = None if g[n] is None else g[n].clone()
        if dtype == torch.float32:
            total = torch.nn.utils.clip_grad_norm_(list(leaves.values()), 1.0)
        else:  # torch's step with optax's clipping rule (max_norm / max(norm, max_norm), no +1e-6)
            total = torch.nn.utils.clip_grad_norm_(list(leaves.values()), float("inf"))
            for n, leaf in leaves.items():
                if g[n] is not None:
                    leaf.grad = g[n] * (1.0 / torch.clamp(total, min=1.0))
        opt.step()
        u, state = tx.update(g, state, p)
        p = fo.apply_updates(p, u)
        assert torch.equal(fo.tree.get(state, "grad_norm"), total)  # bit for bit, same dtype
        ours.append(p)
        ref.append({n: leaf.detach().clone() for n, leaf in leaves.items()})
    if dtype == torch.float64:
        assert max_rel_diff(ours, ref) < 1e-10


def test_snapshot_passes_updates_and_keeps_structure():
    params = {"w": torch.ones(2, 2), "b": torch.zeros(2)}
    tx = snapshot("sq", lambda u: fo.tree.map(torch.square, u))
    state = tx.init(params)
    assert isinstance(state, SnapshotState)
    assert torch.equal(state.measurement["sq"]["w"], torch.ones(2, 2))  # measure(params) at init
    g = {"w": torch.full((2, 2), 3.0), "b": None}
    u, new_state = tx.update(g, state, params)
    assert u["w"] is g["w"] and u["b"] is None
    assert torch.equal(fo.tree.get(new_state, "sq")["w"], torch.full((2, 2), 9.0))
    assert fo.tree.get(new_state, "sq")["b"] is None


@pytest.mark.parametrize("measure", [lambda u: u, lambda u: u["w"][0], lambda u: u["w"].view(-1)],
                         ids=["same", "index-view", "view"])
def test_donated_chain_does_not_overwrite_the_measurement(measure):
    tx = fo.chain(snapshot("seen", measure), fo.scale(2.0))
    params = {"w": torch.zeros(2, 3)}
    g = {"w": torch.arange(6.0).reshape(2, 3)}
    expected = measure({"w": g["w"].clone()})
    u, state = tx.update(g, tx.init(params), params, donate=True)
    assert torch.equal(u["w"], 2 * torch.arange(6.0).reshape(2, 3))
    seen = fo.tree.get(state, "seen")
    assert all(torch.equal(a, b) for a, b in zip(optree.tree_leaves(seen), optree.tree_leaves(expected)))


@pytest.mark.parametrize("debias", [True, False])
def test_monitor_with_ema_matches_rule(debias):
    params = make_params()
    grads = make_grads(params, STEPS)
    decay = 0.8
    tx = fo.chain(monitor({"norm": fo.tree.global_norm,
                           "norm_ema": measure_with_ema(fo.tree.global_norm, decay, debias=debias)}),
                  fo.sgd(lr=0.01))
    state, p = tx.init(params), params
    spec0 = optree.tree_structure(state, none_is_leaf=True)
    mu = 0.0
    for t, g in enumerate(grads, start=1):
        u, state = tx.update(g, state, p)
        p = fo.apply_updates(p, u)
        norm = torch.sqrt(sum((v ** 2).sum() for v in g.values() if v is not None))
        mu = decay * mu + (1 - decay) * norm  # the rule: EMA from zero, debiased by 1 - decay**t
        ref = mu / (1 - decay ** t) if debias else mu
        assert abs(fo.tree.get(state, "norm").item() - norm.item()) <= 1e-12 * norm.item()
        assert abs(fo.tree.get(state, "norm_ema").item() - ref.item()) <= 1e-12 * ref.item()
    assert isinstance(state[0], MonitorState)
    assert optree.tree_structure(state, none_is_leaf=True) == spec0  # same structure as init's


def test_measure_with_ema_of_a_boolean_is_a_fraction():
    decay = 0.9
    tx = monitor({"clipped": measure_with_ema(lambda u: fo.tree.global_norm(u) > 1.0, decay)})
    state = tx.init(torch.zeros(3, dtype=torch.float64))
    mu, flags = 0.0, [True, False, False, True, True]
    for t, flag in enumerate(flags, start=1):
        g = torch.full((3,), 2.0 if flag else 0.1, dtype=torch.float64)
        u, state = tx.update(g, state)
        assert u is g
        mu = decay * mu + (1 - decay) * float(flag)
        value = fo.tree.get(state, "clipped")
        assert value.dtype == torch.get_default_dtype()
        assert abs(value.item() - mu / (1 - decay ** t)) < 1e-6


def test_monitor_transform_gets_params_and_extras_but_not_donate():
    seen = {}

    def update_fn(updates, state, params=None, **extra):
        seen.update(extra, params=params)
        return fo.tree.global_norm(updates), state

    probe = fo.GradientTransformation(lambda p: fo.EmptyState(), update_fn)
    tx = monitor({"probe": probe})
    params = torch.ones(2)
    state = tx.init(params)
    g = torch.tensor([3.0, 4.0])
    u, state = tx.update(g, state, params, donate=True, loss=torch.tensor(1.5))
    assert u is g and torch.equal(g, torch.tensor([3.0, 4.0]))
    assert "donate" not in seen and seen["loss"].item() == 1.5 and seen["params"] is params
    assert fo.tree.get(state, "probe").item() == 5.0


def test_pure_without_donate():
    params = make_params()
    grads = make_grads(params, 3)
    tx = fo.chain(monitor({"n": fo.tree.global_norm, "e": measure_with_ema(fo.tree.global_norm, 0.9)}),
                  snapshot("m", lambda u: fo.tree.map(torch.abs, u)), fo.adam(0.1))
    state = tx.init(params)
    for g in grads:
        g_in, s_in = fo.tree.map(torch.clone, g), fo.tree.map(torch.clone, state)
        u1, s1 = tx.update(g_in, s_in, params)
        for a, b in ((g_in, g), (s_in, state)):
            la, lb = optree.tree_leaves(a), optree.tree_leaves(b)
            assert len(la) == len(lb) and all(torch.equal(x, y) for x, y in zip(la, lb))
        u2, s2 = tx.update(fo.tree.map(torch.clone, g), fo.tree.map(torch.clone, state), params, donate=True)
        assert all(torch.equal(x, y) for x, y in zip(optree.tree_leaves(u1), optree.tree_leaves(u2)))
        assert all(torch.equal(x, y) for x, y in zip(optree.tree_leaves(s1), optree.tree_leaves(s2)))
        state = s1


def test_compiled_snapshot_chain_one_graph():
    torch._dynamo.reset()
    tx = fo.chain(snapshot("grad_norm", fo.tree.global_norm), fo.clip_by_global_norm(1.0), fo.adam(1e-2))
    params = {"w": torch.zeros(3, 2)}
    counter = CountingBackend()
    compiled = torch.compile(tx.update, fullgraph=True, backend=counter)
    state = tx.init(params)
    for i in range(4):
        g = {"w": torch.full((3, 2), float(i + 1))}
        _, state = compiled(g, state, params)
        torch.testing.assert_close(fo.tree.get(state, "grad_norm"), torch.tensor((i + 1) * 6 ** 0.5))
    assert counter.graphs == 1


def test_bad_input_errors():
    with pytest.raises(TypeError, match="measure_name"):
        snapshot(1, fo.tree.global_norm)
    with pytest.raises(TypeError, match="measure"):
        snapshot("x", 3)
    with pytest.raises(TypeError, match="measures"):
        monitor([fo.tree.global_norm])
    with pytest.raises(TypeError, match=r"measures\['a'\]"):
        monitor({"a": 3})
    with pytest.raises(ValueError, match="decay"):
        measure_with_ema(fo.tree.global_norm, 1.5)
    with pytest.raises(TypeError, match="measure"):
        measure_with_ema(fo.scale(1.0), 0.9)
