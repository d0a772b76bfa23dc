"""conditionally_transform / conditionally_mask against optax's rule written out here."""

from __future__ import annotations

import optree
import pytest
import torch

import functional_optim as fo
from functional_optim.wrappers.conditional import (ConditionallyMaskState, ConditionallyTransformState,
                                                   conditionally_mask, conditionally_transform,
                                                   safe_increment)
from parity import SOMETIMES, make_grads, make_params
from compile_counting import CountingBackend

STEPS = 30


def every_third_skipped(step):  # a 0-d bool tensor: no host sync
    return step % 3 != 1


def run_rule(inner, should, params, grads, mask):
    """optax's rule: step counts previous calls; if should(step): inner.update, else the
    updates pass through (transform) or are zeroed (mask) and the inner state is kept."""
    inner_state, outs = inner.init(params), []
    for step, g in enumerate(grads):
        if bool(should(torch.tensor(step, dtype=torch.int32))):
            u, inner_state = inner.update(g, inner_state, params)
        else:
            u = {n: None if v is None else (torch.zeros_like(v) if mask else v) for n, v in g.items()}
        outs.append(u)
        params = fo.apply_updates(params, u)
    return outs, inner_state


def run_wrapped(tx, params, grads, donate=False):
    state, outs = tx.init(params), []
    for g in grads:
        g = {n: None if v is None else v.clone() for n, v in g.items()}
        u, state = tx.update(g, state, params, donate=donate)
        outs.append(u)
        params = fo.apply_updates(params, u)
    return outs, state


def assert_trees_equal(a, b):
    la, sa = optree.tree_flatten(a, none_is_leaf=True)
    lb, sb = optree.tree_flatten(b, none_is_leaf=True)
    assert sa == sb
    for x, y in zip(la, lb):
        assert (x is None and y is None) or (torch.equal(x, y) and x.dtype == y.dtype)


@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("donate", [False, True])
def test_matches_rule_with_tensor_condition(mask, donate):
    params = make_params()
    grads = make_grads(params, STEPS)  # SOMETIMES leaf: None every 3rd step
    wrap = conditionally_mask if mask else conditionally_transform
    ref, ref_inner = run_rule(fo.adam(lr=0.05), every_third_skipped, params, grads, mask)
    ours, state = run_wrapped(wrap(fo.adam(lr=0.05), every_third_skipped), params, grads, donate)
    for a, b in zip(ours, ref):
        assert_trees_equal(a, b)  # bit-identical: torch.where selects, it does not compute
    assert_trees_equal(state.inner_state, ref_inner)
    assert state.step.dtype == torch.int32 and state.step.item() == STEPS
    # the inner adam's per-leaf counts: 20 accepted steps; SOMETIMES lacked a gradient at
    # the accepted steps 0, 3, 6, ... (27): 10 of them
    counts = fo.tree.get(state.inner_state, "count")
    assert counts["matrix"].item() == 20 and counts[SOMETIMES].item() == 10


@pytest.mark.parametrize("mask", [False, True])
def test_python_bool_condition_runs_one_branch(mask):
    params = make_params()
    grads = make_grads(params, 6)
    calls = []

    def should(step):
        calls.append(step)
        return len(calls) % 2 == 0  # a Python bool, decided on the host

    wrap = conditionally_mask if mask else conditionally_transform
    tx = wrap(fo.sgd(lr=0.1, momentum=0.9), should)
    calls_ref = []

    def should_ref(step):
        calls_ref.append(step)
        return len(calls_ref) % 2 == 0

    ref, ref_inner = run_rule(fo.sgd(lr=0.1, momentum=0.9), should_ref, params, grads, mask)
    ours, state = run_wrapped(tx, params, grads)
    for a, b in zip(ours, ref):
        assert_trees_equal(a, b)
    assert_trees_equal(state.inner_state, ref_inner)
    assert [int(c) for c in calls] == list(range(6))  # the step counts given to the condition


def test_extra_args_forwarded_without_donate():
    seen = []

    def should(step, *, loss):
        seen.append(loss)
        return loss < 1.0

    tx = conditionally_transform(fo.scale(2.0), should, forward_extra_args=True)
    state = tx.init(torch.zeros(2))
    u, state = tx.update(torch.ones(2), state, loss=torch.tensor(0.5), donate=True)
    assert torch.equal(u, torch.full((2,), 2.0))
    u, state = tx.update(torch.ones(2), state, loss=torch.tensor(3.0))
    assert torch.equal(u, torch.ones(2))
    assert [float(x) for x in seen] == [0.5, 3.0]
    # without forward_extra_args, extras are not given to the condition (but still to inner)
    tx = conditionally_transform(fo.scale(2.0), lambda step: step >= 0)
    u, _ = tx.update(torch.ones(2), tx.init(torch.zeros(2)), loss=torch.tensor(0.5))
    assert torch.equal(u, torch.full((2,), 2.0))


def test_pure_without_donate():
    params = make_params()
    grads = make_grads(params, 4)
    for wrap in (conditionally_transform, conditionally_mask):
        tx = wrap(fo.adam(lr=0.1), every_third_skipped)
        state = tx.init(params)
        for g in grads:
            g_in, s_in = fo.tree.map(torch.clone, g), fo.tree.map(torch.clone, state)
            u, new_state = tx.update(g_in, s_in, params)
            assert_trees_equal(g_in, g)
            assert_trees_equal(s_in, state)
            u2, _ = tx.update(g_in, s_in, params)
            assert_trees_equal(u, u2)
            state = new_state


def test_state_types_and_saturating_step():
    tx = conditionally_transform(fo.sgd(0.1), lambda s: True)
    assert isinstance(tx.init(torch.zeros(1)), ConditionallyTransformState)
    assert ConditionallyMaskState._fields == ("step", "inner_state")  # optax's order
    top = torch.tensor(2 ** 31 - 1, dtype=torch.int32)
    assert safe_increment(top).item() == 2 ** 31 - 1
    assert safe_increment(torch.tensor(5, dtype=torch.int32)).item() == 6
    assert fo.is_elementwise(conditionally_mask(fo.adam(), lambda s: True))


def test_compiled_mask_one_graph():
    torch._dynamo.reset()
    tx = conditionally_mask(fo.adam(lr=1e-2), lambda step: step % 2 == 0)
    params = {"w": torch.randn(3, 2, generator=torch.Generator().manual_seed(0))}
    counter = CountingBackend()
    compiled = torch.compile(tx.update, fullgraph=True, backend=counter)
    state_c = state_e = tx.init(params)
    for i in range(5):
        g = {"w": torch.full((3, 2), float(i + 1))}
        u_c, state_c = compiled(g, state_c, params)
        u_e, state_e = tx.update(g, state_e, params)
        assert torch.equal(u_c["w"], u_e["w"])
        assert bool((u_c["w"] == 0).all()) == (i % 2 == 1)
    assert counter.graphs == 1


def test_bad_input_errors():
    with pytest.raises(TypeError, match="inner"):
        conditionally_transform(lambda u: u, lambda s: True)
    with pytest.raises(TypeError, match="should_transform_fn"):
        conditionally_mask(fo.sgd(0.1), True)
    with pytest.raises(TypeError, match="forward_extra_args"):
        conditionally_mask(fo.sgd(0.1), lambda s: True, forward_extra_args="yes")
    tx = conditionally_transform(fo.sgd(0.1), lambda s: None)
    with pytest.raises(TypeError, match="should_transform_fn"):
        tx.update(torch.ones(2), tx.init(torch.zeros(2)))
    tx = conditionally_transform(fo.sgd(0.1), lambda s: torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="should_transform_fn"):
        tx.update(torch.ones(2), tx.init(torch.zeros(2)))
