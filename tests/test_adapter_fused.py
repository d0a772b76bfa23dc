"""adapters.fused: eager Adam/AdamW/SGD/Adagrad drop-in steps on torch's fused kernels.

* the dispatched step is torch's fused step bit for bit (same kernel, same state), and the
  functional update (``fused=False``) agrees with it to rounding over 50 steps: float64
  1e-14 relative; float32 4e-7, the loosest agreement of torch's own for-loop and fused
  kernel over these options (measured: torch 3.7e-7 for SGD nesterov, 7.3e-8 for AdamW;
  ours up to 3.7e-7 and 7.2e-8). Adagrad's stays within one ulp of the
  largest param, as torch's own for-loop does of its kernel (both measured in the test);
* it falls back to the functional update where the kernel does not apply;
* a param whose gradient or state is laid out unlike it (the kernels pair elements by
  memory offset) still gets torch's for-loop step;
* a dispatched step allocates nothing param-sized.
"""

from __future__ import annotations

import pytest
import torch

import adapters
from adapter_harness import leaves, make_grads, make_params, max_rel_diff, train
from adapters import fused

STEPS = 50
OPTIONS = {
    "adam": (adapters.Adam, torch.optim.Adam, dict(lr=1e-2, weight_decay=0.1)),
    "adam_amsgrad_maximize": (adapters.Adam, torch.optim.Adam, dict(lr=1e-2, amsgrad=True, maximize=True)),
    "adam_decoupled": (adapters.Adam, torch.optim.Adam, dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)),
    "adamw": (adapters.AdamW, torch.optim.AdamW, dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=0.05)),
    "adamw_tensor_lr": (adapters.AdamW, torch.optim.AdamW, dict(lr=torch.tensor(1e-2), amsgrad=True)),
    "sgd": (adapters.SGD, torch.optim.SGD, dict(lr=1e-2)),
    "sgd_momentum": (adapters.SGD, torch.optim.SGD, dict(lr=1e-2, momentum=0.9, weight_decay=0.1)),
    "sgd_nesterov_maximize": (adapters.SGD, torch.optim.SGD, dict(lr=1e-2, momentum=0.9, nesterov=True,
                                                                  maximize=True)),
    "adagrad": (adapters.Adagrad, torch.optim.Adagrad, dict(lr=1e-2)),
    "adagrad_all_options": (adapters.Adagrad, torch.optim.Adagrad, dict(
        lr=1e-2, lr_decay=0.05, weight_decay=0.1, initial_accumulator_value=0.3, maximize=True)),
    "adagrad_tensor_lr_eps": (adapters.Adagrad, torch.optim.Adagrad, dict(lr=torch.tensor(1e-2), eps=1e-2)),
}
ADAGRAD = [name for name in OPTIONS if name.startswith("adagrad")]
ULP = {torch.float32: 2.0 ** -23, torch.float64: 2.0 ** -52}  # one unit in the last place, relative


def _run(cls, kwargs, dtype, none_every=3, **flags):
    params = leaves(make_params(dtype))
    opt = cls(params, **kwargs, **flags)
    return train(opt, params, make_grads(STEPS, dtype, none_every=none_every)), opt


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", list(OPTIONS))
def test_dispatched_step_is_torchs_fused_step_and_agrees_with_the_functional_update(name, dtype):
    ours_cls, torch_cls, kwargs = OPTIONS[name]
    # torch 2.13's fused SGD fails when a param's first gradient comes after the others'
    # (a None momentum buffer among present ones): every gradient present for SGD here
    none_every = None if name.startswith("sgd") else 3
    # with a tensor lr the default eager step is torch's for-loop (test_adapter_eager_steps.py)
    fused = {"fused": True} if isinstance(kwargs["lr"], torch.Tensor) else {}
    dispatched, opt = _run(ours_cls, kwargs, dtype, none_every, **fused)
    functional, _ = _run(ours_cls, kwargs, dtype, none_every, fused=False)
    torch_fused, torch_opt = _run(torch_cls, kwargs, dtype, none_every, fused=True)
    loop_kwargs = {**kwargs, "lr": float(kwargs["lr"])}  # torch's for-loop computes in float32 with a float32 tensor lr
    torch_loop, _ = _run(torch_cls, loop_kwargs, dtype, none_every, foreach=False)
    assert max_rel_diff(dispatched, torch_fused) == 0.0  # the same kernel on the same state
    tolerance = 1e-14 if dtype == torch.float64 else 4e-7
    assert max_rel_diff(functional, dispatched) <= tolerance
    assert max_rel_diff(functional, torch_loop) <= tolerance  # and the functional update is torch's
    ours_state, ref_state = opt.state_dict()["state"], torch_opt.state_dict()["state"]
    assert ours_state.keys() == ref_state.keys()
    for i in ref_state:
        for key, value in ref_state[i].items():
            assert torch.equal(ours_state[i][key], value), (i, key)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", ADAGRAD)
def test_adagrad_functional_update_is_as_close_to_the_kernel_as_torchs_own_for_loop(name, dtype):
    # over 50 steps both stay within one ulp of the largest param (measured here: ours up
    # to 7.2e-8 in float32 and 1.0e-16 in float64, torch's for-loop up to 7.2e-8 and 1.1e-18)
    ours_cls, torch_cls, kwargs = OPTIONS[name]
    dispatched, _ = _run(ours_cls, kwargs, dtype)
    functional, _ = _run(ours_cls, kwargs, dtype, fused=False)
    torch_fused, _ = _run(torch_cls, kwargs, dtype, fused=True)
    torch_loop, _ = _run(torch_cls, {**kwargs, "lr": float(kwargs["lr"])}, dtype, foreach=False)
    torchs = max_rel_diff(torch_loop, torch_fused)
    ours = max_rel_diff(functional, dispatched)
    assert torchs <= ULP[dtype]
    assert ours <= ULP[dtype]


def test_dispatched_sgd_with_late_first_gradients_follows_torchs_for_loop():
    # a param whose gradient is None at the first step starts its momentum later: its zero
    # buffer makes the kernel's update exactly torch's first-step ``buf = g``
    kwargs = dict(lr=1e-2, momentum=0.9, nesterov=True)
    dispatched, _ = _run(adapters.SGD, kwargs, torch.float64)
    torch_loop, _ = _run(torch.optim.SGD, kwargs, torch.float64, foreach=False)
    assert max_rel_diff(dispatched, torch_loop) <= 1e-14


def test_dispatch_leaves_the_gradients_alone_and_counts_steps():
    params = leaves(make_params(torch.float32))
    opt = adapters.Adam(params, lr=1e-2, weight_decay=0.1, maximize=True)
    grads = make_grads(1, torch.float32, none_every=None)[0]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()
    opt.step()
    assert all(torch.equal(p.grad, g) for p, g in zip(params, grads))
    assert all(s["step"].item() == 2.0 for s in opt.state_dict()["state"].values())


def _dispatches(monkeypatch, make, grads_dtype=None) -> int:
    calls = []
    original = fused.step
    monkeypatch.setattr(fused, "step", lambda *a, **k: (calls.append(1), original(*a, **k))[1])
    params, opt = make()
    for p in params:
        p.grad = torch.ones_like(p) if grads_dtype is None else torch.ones_like(p, dtype=grads_dtype)
    opt.step()
    return len(calls)


def test_falls_back_where_the_kernel_does_not_apply(monkeypatch):
    def make(**kwargs):
        def build():
            params = leaves(make_params(kwargs.pop("dtype", torch.float32)))
            return params, adapters.Adam(params, **kwargs)
        return build

    assert _dispatches(monkeypatch, make(lr=0.1)) == 1
    assert _dispatches(monkeypatch, make(lr=0.1, fused=False)) == 0  # asked not to
    assert _dispatches(monkeypatch, make(lr=0.1, compile=True)) == 0  # the compiled engine
    assert _dispatches(monkeypatch, make(lr=0.1, betas=(torch.tensor(0.9), torch.tensor(0.99)))) == 0

    def sgd(**kwargs):
        def build():
            params = leaves(make_params(torch.float32))
            return params, adapters.SGD(params, lr=0.1, **kwargs)
        return build

    assert _dispatches(monkeypatch, sgd(momentum=0.9)) == 1
    assert _dispatches(monkeypatch, sgd(momentum=0.9, dampening=0.5)) == 0  # first step: buf = g

    def complex_params():
        params = [torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))]
        return params, adapters.Adam(params, lr=0.1)

    assert _dispatches(monkeypatch, complex_params) == 0

    def mixed_dtypes():
        params = [torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(3, dtype=torch.float64))]
        return params, adapters.AdamW(params, lr=0.1)

    assert _dispatches(monkeypatch, mixed_dtypes) == 0

    def user_compiled():  # traced by a user's torch.compile: the functional update
        params = leaves(make_params(torch.float32))
        opt = adapters.Adam(params, lr=0.1)
        opt.step = torch.compile(opt.step, backend="eager", fullgraph=True)
        return params, opt

    torch._dynamo.reset()
    assert _dispatches(monkeypatch, user_compiled) == 0


def test_adagrad_falls_back_where_the_kernel_does_not_apply(monkeypatch):
    def make(dtype=torch.float32, **kwargs):
        def build():
            params = leaves(make_params(dtype))
            return params, adapters.Adagrad(params, **kwargs)
        return build

    assert _dispatches(monkeypatch, make(lr=0.1, lr_decay=0.01, weight_decay=0.1, maximize=True)) == 1
    assert _dispatches(monkeypatch, make(lr=torch.tensor(0.1))) == 1  # a tensor lr is the kernel's
    assert _dispatches(monkeypatch, make(torch.bfloat16, lr=0.1)) == 1
    assert _dispatches(monkeypatch, make(lr=0.1, fused=False)) == 0  # asked not to
    assert _dispatches(monkeypatch, make(lr=0.1, compile=True)) == 0  # the compiled engine
    for name in ("lr_decay", "weight_decay", "eps"):  # tensor hyperparameters other than lr
        assert _dispatches(monkeypatch, make(lr=0.1, **{name: torch.tensor(0.01)})) == 0, name

    def complex_params():
        params = [torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))]
        return params, adapters.Adagrad(params, lr=0.1)

    def mixed_dtypes():
        params = [torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(3, dtype=torch.float64))]
        return params, adapters.Adagrad(params, lr=0.1)

    def user_compiled():  # traced by a user's torch.compile: the functional update
        params = leaves(make_params(torch.float32))
        opt = adapters.Adagrad(params, lr=0.1)
        opt.step = torch.compile(opt.step, backend="eager", fullgraph=True)
        return params, opt

    assert _dispatches(monkeypatch, complex_params) == 0
    assert _dispatches(monkeypatch, mixed_dtypes) == 0
    torch._dynamo.reset()
    assert _dispatches(monkeypatch, user_compiled) == 0


def test_adagrad_sparse_gradients_take_the_functional_update(monkeypatch):
    calls = []
    monkeypatch.setattr(fused, "step", lambda *a, **k: calls.append(1))
    emb = torch.nn.Embedding(5, 3, sparse=True)
    opt = adapters.Adagrad(emb.parameters(), lr=0.1)
    emb(torch.tensor([1, 3])).sum().backward()
    assert not fused.applies("adagrad", opt.param_groups[0], [emb.weight], [emb.weight.grad])
    assert calls == []


def _transposed(values: torch.Tensor) -> torch.nn.Parameter:
    return torch.nn.Parameter(values.detach().clone().t())  # not contiguous


@pytest.mark.parametrize("layout", ["param", "grad", "both"])
@pytest.mark.parametrize("cls,torch_cls,kwargs", [
    (adapters.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
    (adapters.Adam, torch.optim.Adam, dict(lr=0.1, weight_decay=0.1)),
    (adapters.Adagrad, torch.optim.Adagrad, dict(lr=0.1, lr_decay=0.01)),
], ids=["sgd", "adam", "adagrad"])
def test_params_laid_out_unlike_their_gradients_get_torchs_step(layout, cls, torch_cls, kwargs, monkeypatch):
    # the kernels pair param, gradient and state elements by memory offset: a transposed
    # param with a contiguous gradient (or the reverse) runs on contiguous copies. Before,
    # SGD's momentum step on such a param was off by 4.3 (on a step of ~1)
    calls = []
    original = fused.step
    monkeypatch.setattr(fused, "step", lambda *a, **k: (calls.append(1), original(*a, **k))[1])
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(4, 6, dtype=torch.float64, generator=gen)
    grads = [torch.randn(6, 4, dtype=torch.float64, generator=gen) for _ in range(5)]
    results = []
    for make in (lambda ps: cls(ps, **kwargs), lambda ps: torch_cls(ps, **kwargs, foreach=False)):
        p = _transposed(start) if layout != "grad" else torch.nn.Parameter(start.t().contiguous())
        opt = make([p])
        for g in grads:
            if layout == "param":
                p.grad = g.contiguous()
            else:  # a transposed (non-contiguous) gradient
                p.grad = g.t().contiguous().t()
            opt.step()
        results.append(p.detach().clone())
    assert calls == [1] * len(grads)
    assert (p.is_contiguous(), p.grad.is_contiguous()) == {"param": (False, True), "grad": (True, False),
                                                           "both": (False, False)}[layout]
    assert max_rel_diff([[results[0]]], [[results[1]]]) <= 1e-14


def test_bad_group_values_still_raise_on_the_fused_path():
    params = leaves(make_params(torch.float32))
    opt = adapters.Adam(params, lr=0.1)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="lr"):
        opt.step()


@pytest.mark.parametrize("make", [
    lambda ps: adapters.AdamW(ps, lr=1e-2),
    lambda ps: adapters.SGD(ps, lr=1e-2, momentum=0.9),
    lambda ps: adapters.Adagrad(ps, lr=1e-2, lr_decay=0.01),
], ids=["adamw", "sgd", "adagrad"])
def test_dispatching_optimizers_hold_no_scratch_copy_of_the_params(make):
    params = leaves(make_params(torch.float32, shapes=[(), (64,), (32, 16), (8, 4, 4, 4)]))
    opt = make(params)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert all(w is None for w in opt._groups[0].engine.work)  # fused: no param-sized scratch
    smallest = min(p.numel() * p.element_size() for p in params if p.dim())
    assert _largest_allocation(opt.step) < smallest  # nor anything else param-sized
    opt.param_groups[0]["fused"] = False
    opt.step()  # the functional update makes its scratch on first use
    assert all(w is not None and w.shape == p.shape for w, p in zip(opt._groups[0].engine.work, params))


def _largest_allocation(fn) -> int:
    """The largest number of bytes one op allocated while ``fn`` ran (torch's profiler)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max((e.cpu_memory_usage for e in prof.events() if not e.name.startswith("[")), default=0)
