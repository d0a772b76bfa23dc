"""inject_hyperparams: bit-identical to the plain optimizer, readable/writable state,
schedules, static arguments, no host sync, hypergradients, one compiled graph."""

from __future__ import annotations

import pytest
import torch

import functional_optim as fo
from functional_optim import kernels as k
from functional_optim.wrappers.injection import InjectHyperparamsState, inject_hyperparams
from compile_counting import CountingBackend

SHAPES = {"scalar": (), "vector": (7,), "matrix": (100, 100), "conv": (3, 2, 5, 5)}


def _problem(dtype: torch.dtype, steps: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    params = {n: torch.randn(s, generator=gen, dtype=dtype) for n, s in SHAPES.items()}
    grads = [{n: torch.randn(s, generator=gen, dtype=dtype) for n, s in SHAPES.items()}
             for _ in range(steps)]
    return params, grads


def _run(tx, params, grads, *, donate=False, hook=None):
    state = tx.init(params)
    trajectory = []
    for step, g in enumerate(grads):
        if hook is not None:
            state = hook(step, state)
        if donate:
            g = {n: v.clone() for n, v in g.items()}
        updates, state = tx.update(g, state, params, donate=donate)
        params = fo.apply_updates(params, updates)
        trajectory.append(params)
    return trajectory, state


def _assert_bitwise(a, b):
    for pa, pb in zip(a, b):
        for name in pa:
            assert pa[name].dtype == pb[name].dtype
            assert torch.equal(pa[name], pb[name]), name


def _schedule(count):
    return 1e-2 * 0.9 ** count


CONFIGS = {
    "adam": (fo.adam, dict(lr=1e-3)),
    "adam_wd_amsgrad": (fo.adam, dict(lr=1e-3, betas=(0.8, 0.99), weight_decay=1e-2, amsgrad=True)),
    "adamw": (fo.adamw, dict(lr=1e-3, weight_decay=0.1)),
    "sgd_momentum_wd": (fo.sgd, dict(lr=1e-2, momentum=0.9, weight_decay=1e-2)),
    "sgd_nesterov_dampening": (fo.sgd, dict(lr=1e-2, momentum=0.9, weight_decay=1e-2, nesterov=True)),
    "adam_scheduled_lr": (fo.adam, dict(lr=_schedule, weight_decay=1e-2)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_bit_identical_to_the_plain_optimizer(name, dtype):
    factory, kwargs = CONFIGS[name]
    params, grads = _problem(dtype, 50)
    plain, plain_state = _run(factory(**kwargs), params, grads)
    injected, state = _run(inject_hyperparams(factory)(**kwargs), params, grads)
    _assert_bitwise(plain, injected)  # torch.equal on every leaf after every one of 50 steps
    if name != "adam_scheduled_lr":  # (the plain one keeps its schedule's count in its state)
        plain_leaves, inner_leaves = fo.tree.leaves(plain_state), fo.tree.leaves(state.inner_state)
        assert len(plain_leaves) == len(inner_leaves)
        assert all(a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(plain_leaves, inner_leaves))
    # stored in float32 whatever the params' dtype, as the float32 rounding of the value
    for value in fo.tree.leaves(state.hyperparams):
        assert value.dtype == torch.float32 and value.dim() == 0
    if name == "adam":
        assert sorted(state.hyperparams) == ["betas", "eps", "lr"]
        assert state.hyperparams["lr"].item() == torch.tensor(1e-3, dtype=torch.float32).item()
        assert [b.item() for b in state.hyperparams["betas"]] == [
            torch.tensor(v, dtype=torch.float32).item() for v in (0.9, 0.999)]


@pytest.mark.parametrize("name", ["adam_wd_amsgrad", "sgd_nesterov_dampening"])
def test_bit_identical_on_the_multi_tensor_path_and_when_donating(name):
    factory, kwargs = CONFIGS[name]
    params, grads = _problem(torch.float32, 20)
    k.set_foreach(True)
    try:
        plain, _ = _run(factory(**kwargs), params, grads, donate=True)
        injected, _ = _run(inject_hyperparams(factory)(**kwargs), params, grads, donate=True)
    finally:
        k.set_foreach(None)
    _assert_bitwise(plain, injected)
    reference, _ = _run(factory(**kwargs), params, grads)  # the pure per-tensor run
    _assert_bitwise(reference, injected)


@pytest.mark.parametrize("foreach", [False, True], ids=["per_tensor", "foreach"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_kernels_give_a_tensor_scalar_the_bits_of_the_python_number(dtype, foreach):
    # Why the injected optimizer is bit-identical: a 0-d tensor hyperparameter (float32,
    # or float64 holding the exact Python number) gives each kernel the result of the
    # Python number: add(alpha=) and addcmul/addcdiv(value=) round once (a fused
    # multiply-add), 0-d leaves keep their dtype.
    gen = torch.Generator().manual_seed(1)
    shapes = [(), (3,), (1001,), (17, 13)]
    xs = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    ys = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    zs = [torch.rand(s, generator=gen, dtype=dtype) + 0.5 for s in shapes]
    ops = {
        "add_alpha": lambda x, s, **kw: k.add(x, ys, s, **kw),
        "mul": lambda x, s, **kw: k.mul(x, s, **kw),
        "div": lambda x, s, **kw: k.div(x, s, **kw),
        "lerp": lambda x, s, **kw: k.lerp(x, ys, s, **kw),
        "addcmul": lambda x, s, **kw: k.addcmul(x, ys, zs, s, **kw),
        "addcdiv": lambda x, s, **kw: k.addcdiv(x, ys, zs, s, **kw),
    }
    scalar_dtypes = [torch.float64] if dtype == torch.float64 else [torch.float32, torch.float64]
    k.set_foreach(foreach)
    try:
        for value in (0.9, 1e-3):
            for sdt in scalar_dtypes:
                for name, op in ops.items():
                    for mode in ("pure", "donate", "out"):
                        def run(scalar):
                            x = [t.clone() for t in xs]
                            kw = {"donate": True} if mode == "donate" else (
                                {"out": [torch.empty_like(t) for t in xs]} if mode == "out" else {})
                            return op(x, scalar, **kw)
                        for a, b in zip(run(value), run(torch.tensor(value, dtype=sdt))):
                            assert a.dtype == b.dtype == dtype and torch.equal(a, b), (name, mode, sdt)
    finally:
        k.set_foreach(None)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_reduced_precision_kernels_keep_a_tensor_weight_in_float32(dtype):
    # torch's lerp would round a tensor weight to the tensors' dtype (0.1 -> 0.10009765625
    # in bfloat16); the kernels compute it in float32 as torch does with a Python weight.
    # addcmul/addcdiv with a tensor value also match their Python-number results.
    gen = torch.Generator().manual_seed(2)
    shapes = [(3,), (1001,), (17, 13)]
    xs, ys = ([torch.randn(s, generator=gen).to(dtype) for s in shapes] for _ in range(2))
    zs = [(torch.rand(s, generator=gen) + 0.5).to(dtype) for s in shapes]
    for value in (0.1, 0.999):
        for sdt in (torch.float32, torch.float64):
            scalar = torch.tensor(value, dtype=sdt)
            for a, b in [(k.lerp(xs, ys, value), k.lerp(xs, ys, scalar)),
                         (k.addcmul(xs, ys, zs, value), k.addcmul(xs, ys, zs, scalar)),
                         (k.addcdiv(xs, ys, zs, value), k.addcdiv(xs, ys, zs, scalar)),
                         (k.mul(xs, value), k.mul(xs, scalar))]:
                assert all(x.dtype == y.dtype == dtype and torch.equal(x, y) for x, y in zip(a, b))
    donated = [x.clone() for x in xs]
    result = k.lerp(donated, ys, torch.tensor(0.1), donate=True)
    assert all(r is d for r, d in zip(result, donated))
    assert all(torch.equal(r, e) for r, e in zip(result, k.lerp(xs, ys, 0.1)))


def test_written_hyperparameters_take_effect_at_the_next_update():
    params, grads = _problem(torch.float32, 12)
    opt = inject_hyperparams(fo.adam)(lr=1e-3, weight_decay=1e-2)

    def write(step, state):
        if step == 4:
            state.hyperparams["lr"] = torch.tensor(3e-3)
        if step == 8:
            state = fo.tree.set(state, "betas", (torch.tensor(0.5), torch.tensor(0.9)))
            state = fo.tree.set(state, "weight_decay", torch.tensor(0.25))
        return state

    injected, state = _run(opt, params, grads, hook=write)
    # reference: plain optimizers with the new values as Python numbers, sharing one state
    plain_state = fo.adam(lr=1e-3, weight_decay=1e-2).init(params)
    p = params
    for step, g in enumerate(grads):
        kwargs = dict(lr=1e-3, weight_decay=1e-2)
        if step >= 4:
            kwargs["lr"] = 3e-3
        if step >= 8:  # a written value is used as written: 0.9 as its float32 rounding
            kwargs.update(betas=(0.5, torch.tensor(0.9).item()), weight_decay=0.25)
        u, plain_state = fo.adam(**kwargs).update(g, plain_state, p)
        p = fo.apply_updates(p, u)
        for name in p:
            assert torch.equal(p[name], injected[step][name]), (step, name)
    assert fo.tree.get(state, "lr").item() == pytest.approx(3e-3, rel=1e-7)
    assert state.hyperparams["weight_decay"].item() == 0.25


def test_float64_hyperparameters_for_float64_params():
    params, grads = _problem(torch.float64, 10)
    opt = inject_hyperparams(fo.sgd, hyperparam_dtype=torch.float64)(lr=0.1, momentum=0.9)

    def write(step, state):
        if step == 5:
            state.hyperparams["lr"] = torch.tensor(0.07, dtype=torch.float64)
        return state

    injected, state = _run(opt, params, grads, hook=write)
    assert state.hyperparams["lr"].dtype == torch.float64
    plain_state = fo.sgd(lr=0.1, momentum=0.9).init(params)
    p = params
    for step, g in enumerate(grads):
        u, plain_state = fo.sgd(lr=0.1 if step < 5 else 0.07, momentum=0.9).update(g, plain_state, p)
        p = fo.apply_updates(p, u)
    _assert_bitwise([p], [injected[-1]])  # 0.07 kept every bit in float64


def test_schedules_are_evaluated_at_the_count_and_logged():
    params, grads = _problem(torch.float32, 5)
    opt = inject_hyperparams(fo.sgd)(lr=_schedule)
    state = opt.init(params)
    assert state.count.item() == 0 and state.hyperparams["lr"].item() == pytest.approx(1e-2, rel=1e-7)
    for step, g in enumerate(grads):
        state.hyperparams["lr"] = torch.tensor(123.0)  # ignored: lr is scheduled
        updates, state = opt.update(g, state, params)
        expected = _schedule(step)  # count 0 at the first update, as optax
        assert state.count.item() == step + 1
        assert state.hyperparams["lr"].dtype == torch.float32
        assert state.hyperparams["lr"].item() == pytest.approx(expected, rel=1e-7)
        torch.testing.assert_close(updates["matrix"], -expected * g["matrix"], rtol=1e-6, atol=0)


def test_which_arguments_are_injected():
    assert sorted(inject_hyperparams(fo.sgd)(lr=0.1).init({"w": torch.zeros(2)}).hyperparams) == ["lr"]
    sgd = inject_hyperparams(fo.sgd)(lr=0.1, momentum=0.9, weight_decay=torch.tensor(0.0), nesterov=True)
    state = sgd.init({"w": torch.zeros(2)})
    # ints, bools and Python zeros are static; a zero tensor is injected
    assert sorted(state.hyperparams) == ["lr", "momentum", "weight_decay"]
    assert state.hyperparams["weight_decay"].item() == 0.0
    static = inject_hyperparams(fo.adam, static_args=("betas", "eps"))(lr=1e-3)
    assert sorted(static.init({"w": torch.zeros(2)}).hyperparams) == ["lr"]
    # tuples of numbers are stored element by element, one-element tensors as 0-d tensors
    adam = inject_hyperparams(fo.adam)(lr=torch.tensor([2e-3], dtype=torch.float64), betas=[0.9, 0.99])
    hp = adam.init({"w": torch.zeros(2)}).hyperparams
    assert hp["lr"].shape == () and hp["lr"].dtype == torch.float32
    assert isinstance(hp["betas"], tuple) and len(hp["betas"]) == 2
    assert isinstance(adam.init({"w": torch.zeros(2)}), InjectHyperparamsState)


def test_update_is_pure_and_reads_no_tensor_on_the_host(monkeypatch):
    params, grads = _problem(torch.float32, 2)
    opt = inject_hyperparams(fo.adam)(lr=torch.tensor(1e-3), weight_decay=1e-2)
    state = opt.init(params)
    before = [t.clone() for t in fo.tree.leaves((state, grads[0], params))]

    def no_sync(*args, **kwargs):
        raise AssertionError("host sync inside update")

    monkeypatch.setattr(torch.Tensor, "item", no_sync)
    monkeypatch.setattr(torch.Tensor, "__float__", no_sync)
    monkeypatch.setattr(torch.Tensor, "__bool__", no_sync)
    u1, s1 = opt.update(grads[0], state, params)
    u2, s2 = opt.update(grads[0], state, params)
    monkeypatch.undo()
    after = fo.tree.leaves((state, grads[0], params))
    assert all(torch.equal(a, b) for a, b in zip(before, after))  # nothing passed in modified
    assert all(torch.equal(a, b) for a, b in zip(fo.tree.leaves((u1, s1)), fo.tree.leaves((u2, s2))))
    assert s1.hyperparams is not state.hyperparams  # a new dict: writing to it leaves the input alone


def test_hypergradient_through_the_stored_lr():
    # d/d lr of L(p - lr * g) with L(p) = sum(p**2) / 2 is -g . (p - lr * g); the stored lr
    # equals its initial value, where the exact-number correction must not block the gradient
    p = torch.tensor([1.0, -2.0, 3.0])
    g = torch.tensor([0.5, 0.25, -1.0])
    opt = inject_hyperparams(fo.sgd)(lr=0.1)
    state = opt.init({"w": p})

    def loss_after_step(lr):
        s = fo.tree.set(state, "lr", lr)
        updates, _ = opt.update({"w": g}, s, {"w": p})
        new = fo.apply_updates({"w": p}, updates)["w"]
        return (new ** 2).sum() / 2

    lr = torch.tensor(0.1)
    grad = torch.func.grad(loss_after_step)(lr)
    expected = -(g * (p - lr * g)).sum()
    torch.testing.assert_close(grad, expected, rtol=1e-6, atol=1e-7)


def test_compiled_update_one_graph_while_the_lr_in_state_changes():
    torch._dynamo.reset()
    opt = inject_hyperparams(fo.adam)(lr=1e-3, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(4, 3, generator=gen), "b": torch.randn(3, generator=gen)}
    backend = CountingBackend()
    compiled = torch.compile(opt.update, fullgraph=True, backend=backend)
    state_c = state_e = opt.init(params)
    for step in range(4):
        lr = torch.tensor(1e-3 * (step + 1))
        state_c, state_e = fo.tree.set(state_c, "lr", lr), fo.tree.set(state_e, "lr", lr)
        grads = {"w": torch.randn(4, 3, generator=gen), "b": torch.randn(3, generator=gen)}
        u_c, state_c = compiled(grads, state_c, params)
        u_e, state_e = opt.update(grads, state_e, params)
        torch.testing.assert_close(u_c, u_e, rtol=1e-6, atol=1e-9)
    assert backend.graphs == 1  # no recompilation across four lr values


def test_bad_input():
    with pytest.raises(ValueError, match="static_args"):
        inject_hyperparams(fo.adam, static_args=("not_an_argument",))
    with pytest.raises(TypeError, match="hyperparam_dtype"):
        inject_hyperparams(fo.adam, hyperparam_dtype=torch.int32)
    with pytest.raises(TypeError, match="inner_factory"):
        inject_hyperparams(3)
    with pytest.raises(TypeError, match="inner_factory must return"):
        inject_hyperparams(lambda lr=0.1: lr)(lr=0.2)
    with pytest.raises(ValueError, match="lr"):
        inject_hyperparams(fo.adam)(lr=-1.0)  # the factory's own validation, at construction
    opt = inject_hyperparams(fo.sgd)(lr=0.1)
    params = {"w": torch.zeros(2)}
    state = opt.init(params)
    del state.hyperparams["lr"]
    with pytest.raises(ValueError, match="'lr' is missing"):
        opt.update({"w": torch.ones(2)}, state, params)
    state = opt.init(params)
    state.hyperparams["momentum"] = torch.tensor(0.9)  # momentum=0 is static: an error, not a no-op
    with pytest.raises(ValueError, match="momentum"):
        opt.update({"w": torch.ones(2)}, state, params)
    with pytest.raises(ValueError, match="InjectHyperparamsState"):
        opt.update({"w": torch.ones(2)}, (), params)
