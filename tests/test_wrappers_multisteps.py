"""MultiSteps: one inner step on the mean (or sum) of k gradients, zeros in between, the
inner state untouched until the final mini-step, None gradients, donation, skipping,
one compiled graph across mini-steps."""

from __future__ import annotations

import functools

import pytest
import torch

import functional_optim as fo
from functional_optim.wrappers.accumulation import (MultiSteps, MultiStepsState, skip_large_updates,
                                                    skip_not_finite)
from compile_counting import CountingBackend

SHAPES = {"scalar": (), "vector": (5,), "matrix": (4, 3)}


def _params(dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=gen, dtype=dtype) for n, s in SHAPES.items()}


def _grads(params, count, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [{n: torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in params.items()}
            for _ in range(count)]


def _leaves_equal(a, b):
    la, lb = fo.tree.leaves(a), fo.tree.leaves(b)
    return len(la) == len(lb) and all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(la, lb))


INNER = {
    "sgd_momentum": lambda: fo.sgd(lr=0.1, momentum=0.9, weight_decay=1e-2),
    "adam": lambda: fo.adam(lr=0.05, weight_decay=1e-2),
}


@pytest.mark.parametrize("use_grad_mean", [True, False], ids=["mean", "sum"])
@pytest.mark.parametrize("inner", list(INNER))
def test_equals_one_inner_step_on_the_mean_of_k_gradients(inner, use_grad_mean):
    k, cycles = 4, 3
    params = _params()
    grads = _grads(params, k * cycles)
    opt = MultiSteps(INNER[inner](), k, use_grad_mean=use_grad_mean)
    reference = INNER[inner]()
    state, ref_state = opt.init(params), reference.init(params)
    p, ref_p = params, params
    for cycle in range(cycles):
        block = grads[cycle * k:(cycle + 1) * k]
        for i, g in enumerate(block):
            inner_before = state.inner_opt_state
            updates, state = opt.update(g, state, p)
            p = fo.apply_updates(p, updates)
            final = i == k - 1
            assert opt.has_updated(state).item() == final
            assert state.mini_step.item() == (0 if final else i + 1)
            assert state.gradient_step.item() == cycle + int(final)
            if not final:  # zeros out, the inner state exactly as it was
                assert all(torch.equal(u, torch.zeros_like(u)) for u in updates.values())
                assert _leaves_equal(state.inner_opt_state, inner_before)
        # the reference rule: one inner step on (g1 + ... + gk) / k, or on the sum
        combined = {n: sum(g[n] for g in block) for n in params}
        if use_grad_mean:
            combined = {n: v / k for n, v in combined.items()}
        ref_u, ref_state = reference.update(combined, ref_state, ref_p)
        ref_p = fo.apply_updates(ref_p, ref_u)
        for n in params:
            torch.testing.assert_close(p[n], ref_p[n], rtol=1e-12, atol=1e-14)
        assert all(torch.equal(a, torch.zeros_like(a)) for a in state.acc_grads.values())


def test_every_k_schedule_and_sum_carried_for_a_leaf_missing_at_the_final_step():
    params = {"a": torch.zeros(3, dtype=torch.float64), "b": torch.zeros(2, dtype=torch.float64),
              "frozen": torch.zeros(2, dtype=torch.float64)}
    opt = MultiSteps(fo.sgd(lr=1.0), every_k_schedule=lambda step: 2 if step == 0 else 3)
    state = opt.init(params)
    grads = _grads({"a": params["a"], "b": params["b"]}, 5)
    # "b" is None at mini-step 1 (k=2: the final one) and 3; "frozen" never has a gradient
    present_b = [True, False, True, False, True]
    emitted = []
    for i, g in enumerate(grads):
        full = {"a": g["a"], "b": g["b"] if present_b[i] else None, "frozen": None}
        updates, state = opt.update(full, state, params)
        assert updates["frozen"] is None
        assert (updates["b"] is None) == (not present_b[i])
        emitted.append(updates)
    # cycle 1 (k=2): mini-steps 0, 1; cycle 2 (k=3): mini-steps 2, 3, 4
    assert opt.has_updated(state).item() and state.gradient_step.item() == 2
    g = grads
    torch.testing.assert_close(emitted[1]["a"], -(g[0]["a"] + g[1]["a"]) / 2, rtol=1e-12, atol=0)
    # "b" had no gradient at the final step 1: no update, its sum g0 carried to cycle 2
    assert emitted[1]["b"] is None
    torch.testing.assert_close(emitted[4]["a"], -(g[2]["a"] + g[3]["a"] + g[4]["a"]) / 3, rtol=1e-12, atol=0)
    torch.testing.assert_close(emitted[4]["b"], -(g[0]["b"] + g[2]["b"] + g[4]["b"]) / 3, rtol=1e-12, atol=0)
    for i in (0, 2, 3):
        assert torch.equal(emitted[i]["a"], torch.zeros(3, dtype=torch.float64))
    assert torch.equal(state.acc_grads["frozen"], torch.zeros(2, dtype=torch.float64))


def test_none_leaf_gets_no_inner_update():
    params = {"w": torch.ones(3, dtype=torch.float64), "frozen": torch.ones(2, dtype=torch.float64)}
    opt = MultiSteps(fo.adam(lr=0.1), 2)
    state = opt.init(params)
    for _ in range(4):
        _, state = opt.update({"w": torch.ones(3, dtype=torch.float64), "frozen": None}, state, params)
    adam_state = state.inner_opt_state[0]
    assert adam_state.count["w"].item() == 2 and adam_state.count["frozen"].item() == 0
    assert torch.equal(adam_state.mu["frozen"], torch.zeros(2, dtype=torch.float64))


def test_pure_and_donated_runs_agree_and_donation_stays_in_our_buffers():
    params = _params(torch.float32)
    grads = _grads(params, 6)
    make = lambda: MultiSteps(fo.adam(lr=0.05), 3, use_grad_mean=True)
    opt = make()
    pure_state = don_state = opt.init(params)
    for i, g in enumerate(grads):
        before = [t.clone() for t in fo.tree.leaves((g, pure_state, params))]
        pure_u, new_pure = opt.update(g, pure_state, params)
        # pure: nothing passed in is modified
        assert all(torch.equal(a, b) for a, b in zip(before, fo.tree.leaves((g, pure_state, params))))
        donated = {n: v.clone() for n, v in g.items()}
        acc_pointers = [t.data_ptr() for t in don_state.acc_grads.values()]
        inner_before = [t.clone() for t in fo.tree.leaves(don_state.inner_opt_state)]
        inner_buffers = fo.tree.leaves(don_state.inner_opt_state)
        don_u, new_don = opt.update(donated, don_state, params, donate=True)
        # the sum is accumulated in place; the inner state (whose update is never donated)
        # is not overwritten, so a non-final mini-step leaves it exactly as it was
        assert [t.data_ptr() for t in new_don.acc_grads.values()] == acc_pointers
        assert all(torch.equal(a, b) for a, b in zip(inner_buffers, inner_before))
        for n in params:  # the output went into the donated gradients (where dtypes agree:
            # fo.adam returns float64 updates for a 0-d float32 leaf)
            assert (don_u[n].data_ptr() == donated[n].data_ptr()) == (don_u[n].dtype == donated[n].dtype)
        assert _leaves_equal(don_u, pure_u) and _leaves_equal(new_don, new_pure)
        pure_state, don_state = new_pure, new_don
    assert pure_state.gradient_step.item() == 2


def test_skip_not_finite_skips_a_mini_step_without_touching_the_state():
    params = _params()
    grads = _grads(params, 5)
    grads[1]["matrix"][0, 0] = float("nan")
    opt = MultiSteps(fo.sgd(lr=0.1, momentum=0.9), 2, should_skip_update_fn=skip_not_finite)
    state = opt.init(params)
    assert state.skip_state["num_not_finite"].item() == 0
    outputs = []
    for i, g in enumerate(grads):
        previous = state
        updates, state = opt.update(g, state, params)
        outputs.append(updates)
        if i == 1:
            assert state.skip_state["should_skip"].item() and state.skip_state["num_not_finite"].item() == 1
            assert _leaves_equal(state._replace(skip_state=()), previous._replace(skip_state=()))
            assert all(torch.equal(u, torch.zeros_like(u)) for u in updates.values())
    # mini-steps 0, 2 form the first cycle, 3, 4 the second
    reference = fo.sgd(lr=0.1, momentum=0.9)
    ref_state = reference.init(params)
    for pair, out in (((0, 2), outputs[2]), ((3, 4), outputs[4])):
        mean = {n: (grads[pair[0]][n] + grads[pair[1]][n]) / 2 for n in params}
        ref_u, ref_state = reference.update(mean, ref_state, params)
        for n in params:
            torch.testing.assert_close(out[n], ref_u[n], rtol=1e-12, atol=1e-14)


def test_skip_large_updates():
    fn = functools.partial(skip_large_updates, max_squared_norm=10.0)
    opt = MultiSteps(fo.sgd(lr=1.0), 1, should_skip_update_fn=fn)
    params = {"w": torch.zeros(2)}
    state = opt.init(params)
    updates, state = opt.update({"w": torch.tensor([3.0, 4.0])}, state, params)  # 25 >= 10: skipped
    assert torch.equal(updates["w"], torch.zeros(2)) and state.gradient_step.item() == 0
    assert state.skip_state["norm_squared"].item() == 25.0
    updates, state = opt.update({"w": torch.tensor([1.0, 2.0])}, state, params)
    assert torch.equal(updates["w"], torch.tensor([-1.0, -2.0])) and state.gradient_step.item() == 1


def test_accumulator_dtype_and_gradient_transformation():
    params = {"w": torch.ones(4, dtype=torch.bfloat16)}
    bf16 = functools.partial(torch.full, (4,), dtype=torch.bfloat16)
    grads = [bf16(1.0), bf16(2 ** -8), bf16(2 ** -8)]  # 1 + 2**-8 is a tie that bfloat16 rounds to 1
    results = {}
    for acc_dtype in (torch.float32, None):
        opt = MultiSteps(fo.sgd(lr=1.0), 3, use_grad_mean=False, accumulator_dtype=acc_dtype)
        tx = opt.gradient_transformation()
        assert isinstance(tx, fo.GradientTransformation) and opt.inner_opt is not None
        state = tx.init(params)
        assert isinstance(state, MultiStepsState)
        assert state.acc_grads["w"].dtype == (acc_dtype or torch.bfloat16)
        for g in grads:
            updates, state = tx.update({"w": g}, state, params)
        assert updates["w"].dtype == torch.bfloat16  # the inner optimizer gets the gradients' dtype
        results[acc_dtype] = updates["w"]
    assert torch.equal(results[torch.float32], bf16(-(1 + 2 ** -7)))  # the float32 sum, exact
    assert torch.equal(results[None], bf16(-1.0))  # the bfloat16 sum lost both small terms


def test_compiled_update_one_graph_across_mini_steps():
    torch._dynamo.reset()
    params = {"w": torch.randn(4, 3), "b": torch.randn(3)}
    opt = MultiSteps(fo.adam(lr=1e-2), 3)
    backend = CountingBackend()
    compiled = torch.compile(opt.update, fullgraph=True, backend=backend)
    state_c = state_e = opt.init(params)
    for _ in range(6):
        g = {"w": torch.randn(4, 3), "b": torch.randn(3)}
        u_c, state_c = compiled(g, state_c, params)
        u_e, state_e = opt.update(g, state_e, params)
        torch.testing.assert_close(u_c, u_e, rtol=1e-6, atol=1e-8)
    assert backend.graphs == 1  # final and non-final mini-steps run the same graph
    assert state_c.gradient_step.item() == 2


def test_bad_input():
    with pytest.raises(TypeError, match="opt"):
        MultiSteps(lambda u: u, 2)
    with pytest.raises(ValueError, match="every_k_schedule"):
        MultiSteps(fo.sgd(0.1), 0)
    with pytest.raises(TypeError, match="every_k_schedule"):
        MultiSteps(fo.sgd(0.1), 2.5)
    with pytest.raises(TypeError, match="use_grad_mean"):
        MultiSteps(fo.sgd(0.1), 2, use_grad_mean=1)
    with pytest.raises(TypeError, match="accumulator_dtype"):
        MultiSteps(fo.sgd(0.1), 2, accumulator_dtype=torch.int64)
    bad_skip = MultiSteps(fo.sgd(0.1), 2, should_skip_update_fn=lambda u, s, p: (False, ()))
    with pytest.raises(ValueError, match="0-d bool tensor"):
        bad_skip.init({"w": torch.zeros(1)})
    opt = MultiSteps(fo.sgd(0.1), 2)
    with pytest.raises(ValueError, match="MultiStepsState"):
        opt.update({"w": torch.ones(1)}, (), {"w": torch.ones(1)})
    with pytest.raises(ValueError, match="acc_grads"):
        opt.update({"v": torch.ones(1)}, opt.init({"w": torch.zeros(1)}))
