"""apply_if_finite: non-finite steps skipped exactly, counts, optax's give-up rule,
purity and donation, one compiled graph."""

from __future__ import annotations

import pytest
import torch

import functional_optim as fo
from functional_optim.wrappers.finite import ApplyIfFiniteState, all_finite, apply_if_finite
from compile_counting import CountingBackend

NAN, INF = float("nan"), float("inf")


def _params(dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    return {"w": torch.randn(5, 4, generator=gen, dtype=dtype), "b": torch.randn(4, generator=gen, dtype=dtype),
            "s": torch.randn((), generator=gen, dtype=dtype)}


def _grads(params, steps, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [{n: torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in params.items()}
            for _ in range(steps)]


def _leaves_equal(a, b):
    la, lb = fo.tree.leaves(a), fo.tree.leaves(b)
    return len(la) == len(lb) and all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(la, lb))


def test_non_finite_steps_are_skipped_exactly():
    params = _params()
    grads = _grads(params, 8)
    bad_steps = {2: ("w", (1, 2), INF), 3: ("s", (), NAN), 6: ("b", (0,), -INF)}
    for step, (name, index, value) in bad_steps.items():
        grads[step][name][index] = value
    opt = apply_if_finite(fo.adam(lr=1e-2, weight_decay=1e-2), max_consecutive_errors=5)
    plain = fo.adam(lr=1e-2, weight_decay=1e-2)
    state, plain_state = opt.init(params), plain.init(params)
    p, plain_p = params, params
    notfinite, total = 0, 0
    for step, g in enumerate(grads):
        previous_inner = state.inner_state
        updates, state = opt.update(g, state, p)
        p = fo.apply_updates(p, updates)
        if step in bad_steps:  # zeros out, inner state bitwise unchanged
            notfinite, total = notfinite + 1, total + 1
            assert all(torch.equal(u, torch.zeros_like(u)) for u in updates.values())
            assert _leaves_equal(state.inner_state, previous_inner)
        else:  # the plain optimizer fed only the finite steps
            notfinite = 0
            plain_u, plain_state = plain.update(g, plain_state, plain_p)
            plain_p = fo.apply_updates(plain_p, plain_u)
        assert all(torch.equal(p[n], plain_p[n]) for n in p), step
        assert _leaves_equal(state.inner_state, plain_state)
        assert state.notfinite_count.item() == notfinite and state.notfinite_count.dtype == torch.int32
        assert state.total_notfinite.item() == total and state.total_notfinite.dtype == torch.int32
        assert state.last_finite.item() == (step not in bad_steps)
    assert isinstance(state, ApplyIfFiniteState) and total == 3


@pytest.mark.parametrize("max_errors", [0, 2])
def test_applied_anyway_after_more_than_max_consecutive_errors(max_errors):
    params = {"w": torch.ones(3)}
    opt = apply_if_finite(fo.sgd(lr=0.1, momentum=0.9), max_consecutive_errors=max_errors)
    state = opt.init(params)
    bad = {"w": torch.tensor([1.0, NAN, 1.0])}
    for attempt in range(1, max_errors + 2):
        updates, state = opt.update(bad, state, params)
        applied = attempt > max_errors  # optax: notfinite_count > max_consecutive_errors
        assert state.notfinite_count.item() == attempt and state.total_notfinite.item() == attempt
        assert updates["w"].isnan().any().item() == applied
        assert state.inner_state[0].trace["w"].isnan().any().item() == applied
        assert state.inner_state[0].count["w"].item() == int(applied)
    # a finite step resets the consecutive count, not the total
    updates, state = opt.update({"w": torch.ones(3)}, state, params)
    assert state.notfinite_count.item() == 0 and state.total_notfinite.item() == max_errors + 1
    assert state.last_finite.item()


def test_none_leaves_pure_and_donated():
    params = {"w": torch.ones(2, 2), "frozen": torch.ones(3)}
    opt = apply_if_finite(fo.adam(lr=0.1), max_consecutive_errors=1)
    state = opt.init(params)
    good = {"w": torch.full((2, 2), 0.5), "frozen": None}
    bad = {"w": torch.tensor([[1.0, INF], [0.0, 1.0]]), "frozen": None}
    for g in (good, bad):
        before = [t.clone() for t in fo.tree.leaves((g, state, params))]
        pure_u, pure_s = opt.update(g, state, params)
        # pure: nothing passed in is modified
        assert all(torch.equal(a, b) for a, b in zip(before, fo.tree.leaves((g, state, params))))
        assert pure_u["frozen"] is None
        donated = {"w": g["w"].clone(), "frozen": None}
        pointer = donated["w"].data_ptr()
        don_u, don_s = opt.update(donated, state, params, donate=True)
        assert don_u["w"].data_ptr() == pointer  # the output went into the donated buffer
        assert don_u["frozen"] is None
        assert torch.equal(don_u["w"], pure_u["w"]) and _leaves_equal(don_s, pure_s)
        state = pure_s
    assert state.total_notfinite.item() == 1


def test_all_finite_helper():
    assert all_finite({"a": torch.ones(2), "b": None}).item()
    assert not all_finite([torch.ones(2), torch.tensor([INF])]).item()
    assert not all_finite([torch.tensor([complex(1.0, NAN)])]).item()
    assert all_finite({}).item()


def test_compiled_wrapped_adam_step_is_one_graph():
    torch._dynamo.reset()
    params = {"w": torch.randn(4, 3), "b": torch.randn(3)}
    opt = apply_if_finite(fo.adam(lr=1e-2), max_consecutive_errors=3)
    backend = CountingBackend()
    compiled = torch.compile(opt.update, fullgraph=True, backend=backend)
    state_c = state_e = opt.init(params)
    for step in range(3):
        g = {"w": torch.randn(4, 3), "b": torch.randn(3)}
        if step == 1:
            g["w"][0, 0] = NAN
        u_c, state_c = compiled(g, state_c, params)
        u_e, state_e = opt.update(g, state_e, params)
        # equal to eager up to rounding (Dynamo folds Python scalar arithmetic its own way)
        torch.testing.assert_close(u_c, u_e, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(fo.tree.leaves(state_c), fo.tree.leaves(state_e), rtol=1e-6, atol=1e-8)
    assert backend.graphs == 1  # finite and non-finite steps run the same graph
    assert state_c.total_notfinite.item() == 1


def test_bad_input():
    with pytest.raises(TypeError, match="inner"):
        apply_if_finite(lambda u: u, 1)
    with pytest.raises(TypeError, match="max_consecutive_errors"):
        apply_if_finite(fo.sgd(0.1), 1.5)
    with pytest.raises(ValueError, match="max_consecutive_errors"):
        apply_if_finite(fo.sgd(0.1), -1)
    opt = apply_if_finite(fo.sgd(0.1), 1)
    with pytest.raises(ValueError, match="ApplyIfFiniteState"):
        opt.update({"w": torch.ones(1)}, (), {"w": torch.ones(1)})
