"""adapters.fused: eager Adam/AdamW/SGD drop-in steps on torch's fused kernels.

* the dispatched step is torch's fused step bit for bit (same kernel, same state), and the
  functional update (``fused=False``) agrees with it to rounding over 50 steps: float64
  1e-14 relative; float32 2e-6 (measured up to 1.4e-6 for AdamW; the functional update's
  arrangement of Adam's scalars differs from torch's for-loop by as much, while torch's
  for-loop and fused kernel differ by up to 7e-8);
* it falls back to the functional update where the kernel does not apply.
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
}


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
    dispatched, opt = _run(ours_cls, kwargs, dtype, none_every)
    functional, _ = _run(ours_cls, kwargs, dtype, none_every, fused=False)
    torch_fused, torch_opt = _run(torch_cls, kwargs, dtype, none_every, fused=True)
    loop_kwargs = {**kwargs, "lr": float(kwargs["lr"])}  # torch's for-loop computes in float32 with a float32 tensor lr
    torch_loop, _ = _run(torch_cls, loop_kwargs, dtype, none_every, foreach=False)
    assert max_rel_diff(dispatched, torch_fused) == 0.0  # the same kernel on the same state
    tolerance = 1e-14 if dtype == torch.float64 else 2e-6
    assert max_rel_diff(functional, dispatched) <= tolerance
    assert max_rel_diff(functional, torch_loop) <= tolerance  # and the functional update is torch's
    ours_state, ref_state = opt.state_dict()["state"], torch_opt.state_dict()["state"]
    assert ours_state.keys() == ref_state.keys()
    for i in ref_state:
        for key, value in ref_state[i].items():
            assert torch.equal(ours_state[i][key], value), (i, key)


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


def test_bad_group_values_still_raise_on_the_fused_path():
    params = leaves(make_params(torch.float32))
    opt = adapters.Adam(params, lr=0.1)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="lr"):
        opt.step()


def test_dispatching_optimizers_hold_no_scratch_copy_of_the_params():
    params = leaves(make_params(torch.float32))
    opt = adapters.AdamW(params, lr=1e-2)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert all(w is None for w in opt._groups[0].engine.work)  # fused: no param-sized scratch
    opt.param_groups[0]["fused"] = False
    opt.step()  # the functional update makes its scratch on first use
    assert all(w is not None and w.shape == p.shape for w, p in zip(opt._groups[0].engine.work, params))
