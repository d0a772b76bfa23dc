"""Schedules: optax's and MONAI's values over 1000 steps, count types, compile, autograd, errors.

Reference values come from tests/reference/schedules.json (optax 0.2.8 with jax x64, and
MONAI 1.6.1's schedulers), written by tests/reference/generate_schedules.py.
"""

from __future__ import annotations

import pytest
import torch

import functional_optim as fo
from schedule_refs import CASES, MONAI_CASES, OPTAX_CASES, STEPS, assert_matches, build, reference

ALL = OPTAX_CASES + MONAI_CASES


def test_reference_covers_every_schedule():
    names = {CASES[c]["fn"] for c in CASES} | {"join_schedules"}
    expected = set(fo.schedules.__all__)
    assert expected <= names, f"no reference for {sorted(expected - names)}"
    assert len(OPTAX_CASES) >= 20 and len(MONAI_CASES) == 4 and STEPS == 1000


@pytest.mark.parametrize("name", ALL)
def test_int_counts_match_reference(name):
    sched = build(name)
    values = [sched(t) for t in range(STEPS)]
    assert all(isinstance(v, float) for v in values)  # Python counts give Python floats
    assert_matches(values, name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.int32], ids=["float64", "int32"])
@pytest.mark.parametrize("name", ALL)
def test_tensor_counts_match_reference(name, dtype):
    sched = build(name)
    values = []
    for t in range(STEPS):
        v = sched(torch.tensor(t, dtype=dtype))
        if name in ("constant", "linear_disabled"):  # constant schedules return their value as is (as optax)
            assert v == CASES[name]["values"][0]
        else:
            assert isinstance(v, torch.Tensor) and v.shape == () and v.dtype == torch.float64
        values.append(v)
    assert_matches(values, name)


def test_result_dtypes_and_tensor_hyperparameters():
    sched = fo.cosine_decay_schedule(1.0, 10)
    assert sched(torch.tensor(3.0, dtype=torch.float32)).dtype == torch.float32
    assert sched(torch.tensor(3, dtype=torch.int64)).dtype == torch.float64
    init = torch.tensor(0.5, dtype=torch.float64)
    v = fo.cosine_decay_schedule(init, 10)(3)  # a tensor hyperparameter gives a tensor
    assert isinstance(v, torch.Tensor) and abs(float(v) - 0.5 * fo.cosine_decay_schedule(1.0, 10)(3)) < 1e-15


@pytest.mark.parametrize("fn,kwargs,peak_arg", [
    (fo.warmup_cosine_decay_schedule, dict(init_value=0.0, warmup_steps=5, decay_steps=20, end_value=0.1), "peak_value"),
    (fo.cosine_onecycle_schedule, dict(transition_steps=20), "peak_value"),
    (fo.exponential_decay, dict(transition_steps=4, decay_rate=0.5, end_value=0.05), "init_value"),
    (fo.warmup_cosine_schedule, dict(warmup_steps=3, t_total=20, end_lr=0.01), "peak_value"),
])
def test_differentiable_in_tensor_hyperparameters(fn, kwargs, peak_arg):
    """d value / d peak by autograd equals a central finite difference (learned-lr use)."""
    for t in (0, 2, 7, 13, 30):
        peak = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
        value = fn(**kwargs, **{peak_arg: peak})(torch.tensor(t, dtype=torch.int32))
        (grad,) = torch.autograd.grad(value, peak, allow_unused=True)
        grad = 0.0 if grad is None else float(grad)
        h = 1e-6
        fd = (fn(**kwargs, **{peak_arg: 0.3 + h})(t) - fn(**kwargs, **{peak_arg: 0.3 - h})(t)) / (2 * h)
        assert abs(grad - fd) < 1e-7, (fn.__name__, t, grad, fd)


def test_every_schedule_compiles_once_over_changing_counts():
    """All reference schedules in one fullgraph-compiled function: one compilation for every
    count (no Python branch on the count's value), values equal to eager."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    scheds = [build(name) for name in ALL]

    def all_values(count):
        return torch.stack([torch.as_tensor(s(count), dtype=torch.float64) for s in scheds])

    compiled = torch.compile(all_values, backend=counter, fullgraph=True)
    for t in list(range(0, STEPS, 37)) + [99, 100, 101, 299, 300, 301, 999]:
        count = torch.tensor(t, dtype=torch.int32)
        torch.testing.assert_close(compiled(count), all_values(count), rtol=1e-14, atol=0)
    assert counter.frame_count == 1


def test_schedule_driven_chain_compiles_without_recompiles():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    sched = fo.warmup_cosine_decay_schedule(0.0, 1e-2, warmup_steps=20, decay_steps=150, end_value=1e-4)
    tx = fo.chain(fo.scale_by_adam(), fo.scale_by_learning_rate(sched))
    compiled = torch.compile(tx.update, backend=counter, fullgraph=True)
    gen = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(3, 2, generator=gen, dtype=torch.float64),
              "b": torch.randn(2, generator=gen, dtype=torch.float64)}
    eager_p, comp_p = params, params
    eager_s = comp_s = tx.init(params)
    for step in range(200):
        grads = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}
        eu, eager_s = tx.update(grads, eager_s, eager_p)
        cu, comp_s = compiled(grads, comp_s, comp_p)
        eager_p, comp_p = fo.apply_updates(eager_p, eu), fo.apply_updates(comp_p, cu)
        if step == 0:
            first = counter.frame_count
    for k in params:
        torch.testing.assert_close(comp_p[k], eager_p[k], rtol=1e-12, atol=0)
    assert first == 1 and counter.frame_count == 1  # zero recompiles as the count moves
    assert int(comp_s[1].count) == 200


def test_scale_by_schedule_sees_count_from_zero():
    sched = fo.piecewise_constant_schedule(1.0, {2: 0.5})
    tx = fo.scale_by_learning_rate(sched, flip_sign=False)
    state = tx.init({"w": torch.zeros(1)})
    seen = []
    for _ in range(4):
        u, state = tx.update({"w": torch.ones(1)}, state)
        seen.append(float(u["w"]))
    assert seen == [1.0, 1.0, 0.5, 0.5]


def test_optax_edge_behaviour_is_kept():
    assert fo.warmup_constant_schedule(0.1, 1.0, warmup_steps=0)(10) == 0.1  # a 0-step linear is constant init
    assert fo.exponential_decay(0.3, transition_steps=5, decay_rate=0.0)(50) == 0.3
    assert fo.exponential_decay(0.3, transition_steps=0, decay_rate=0.5)(50) == 0.3
    assert fo.piecewise_interpolate_schedule("linear", 1.0, {5: 0.5})(-1) == 0.0  # negative counts give 0
    assert fo.cosine_decay_schedule(1.0, 10, alpha=0.2)(-5) == pytest.approx(0.6, rel=1e-14)  # not clipped below 0
    s = fo.join_schedules([fo.constant_schedule(1.0), fo.constant_schedule(2.0)], [3])
    assert [s(2), s(3)] == [1.0, 2.0]
    assert [float(s(torch.tensor(2))), float(s(torch.tensor(3)))] == [1.0, 2.0]


@pytest.mark.parametrize("call,error,match", [
    (lambda: fo.cosine_decay_schedule(1.0, 0), ValueError, "decay_steps"),
    (lambda: fo.cosine_decay_schedule("1", 10), TypeError, "init_value"),
    (lambda: fo.polynomial_schedule(1.0, 0.0, 1, 10, transition_begin=-1), ValueError, "transition_begin"),
    (lambda: fo.linear_schedule(1.0, 0.0, torch.tensor(10)), TypeError, "transition_steps"),
    (lambda: fo.exponential_decay(1.0, 10, -0.5), ValueError, "decay_rate"),
    (lambda: fo.exponential_decay(1.0, 10, 0.5, staircase=1), TypeError, "staircase"),
    (lambda: fo.piecewise_constant_schedule(1.0, {10: -0.1}), ValueError, "non-negative"),
    (lambda: fo.piecewise_constant_schedule(1.0, [(10, 0.1)]), TypeError, "boundaries_and_scales"),
    (lambda: fo.piecewise_interpolate_schedule("cubic", 1.0), ValueError, "interpolate_type"),
    (lambda: fo.warmup_cosine_decay_schedule(0.0, 1.0, 10, 10), ValueError, "decay_steps"),
    (lambda: fo.linear_onecycle_schedule(0, 1.0), ValueError, "transition_steps"),
    (lambda: fo.linear_onecycle_schedule(100, 1.0, pct_start=0.9), ValueError, "pct_start"),
    (lambda: fo.cosine_onecycle_schedule(100, 1.0, div_factor=0), ValueError, "div_factor"),
    (lambda: fo.sgdr_schedule([dict(init_value=0.0, peak_value=1.0, warmup_steps=1)]), ValueError, "decay_steps"),
    (lambda: fo.join_schedules([fo.constant_schedule(1.0)], [5]), ValueError, "boundaries"),
    (lambda: fo.join_schedules([1.0, fo.constant_schedule(1.0)], [5]), TypeError, r"schedules\[0\]"),
    (lambda: fo.warmup_cosine_schedule(1.0, 5, 10, warmup_multiplier=1.5), ValueError, "warmup_multiplier"),
    (lambda: fo.linear_range_schedule(1e-3, 1.0, num_iter=1), ValueError, "num_iter"),
    (lambda: fo.exponential_range_schedule(0.0, 1.0, num_iter=10), ValueError, "init_value"),
    (lambda: fo.linear_schedule(0.0, 1.0, 5)(None), TypeError, "count"),
])
def test_bad_arguments_raise_naming_them(call, error, match):
    with pytest.raises(error, match=match):
        call()
