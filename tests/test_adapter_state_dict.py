"""Checkpoints in torch's format: save, load, and continue on the identical trajectory.

Every state_dict goes through ``torch.save`` and ``torch.load(weights_only=True)``. A
fresh optimizer (built with other hyperparameters, which the load must restore) takes
over after 10 steps and runs 10 more: ours into ours (exactly the uninterrupted run),
torch's into ours and ours into torch's (within 1e-12 of the uninterrupted run), for
SGD with and without momentum, Adam, Adam with AMSGrad and AdamW, eager and compiled.
"""

from __future__ import annotations

import pytest
import torch

import adapters
import functional_optim as fo
from adapter_harness import (SOMETIMES, assert_state_dicts_close, groups, leaves, make_grads,
                             make_params, max_rel_diff, plain, roundtrip, train)

SPLIT, STEPS = 10, 20
CROSS_TOL = 1e-12  # ours vs torch's rounding over the 10 steps after the switch

CASES = {
    "sgd-momentum": (adapters.SGD, torch.optim.SGD, dict(lr=1e-2, momentum=0.9), [
        dict(lr=0.1), dict(weight_decay=0.1, dampening=0.1), dict(nesterov=True)]),
    "sgd-plain": (adapters.SGD, torch.optim.SGD, dict(lr=1e-2), [
        dict(lr=0.1), dict(weight_decay=0.1), dict(maximize=True)]),
    "adam": (adapters.Adam, torch.optim.Adam, dict(lr=1e-2), [
        dict(lr=0.1, betas=(0.8, 0.99)), dict(weight_decay=0.1), dict(eps=1e-4)]),
    "adam-amsgrad": (adapters.Adam, torch.optim.Adam, dict(lr=1e-2, amsgrad=True), [
        dict(lr=0.1), dict(weight_decay=0.1, maximize=True), dict(betas=(0.5, 0.9))]),
    "adamw": (adapters.AdamW, torch.optim.AdamW, dict(lr=1e-2), [
        dict(lr=0.1, weight_decay=0.0), dict(weight_decay=0.3), dict(amsgrad=True)]),
}
# compile=True for one case of each state layout (momentum buffer; Adam's moments with
# max_exp_avg_sq): every compiled optimizer compiles its own graphs
RUNS = [(name, False) for name in CASES] + [("sgd-momentum", True), ("adam-amsgrad", True)]
RUN_IDS = [f"{name}-{'compiled' if c else 'eager'}" for name, c in RUNS]


def build(kind, name, params, compile=False, fresh=False):
    ours_cls, torch_cls, defaults, overrides = CASES[name]
    if fresh:  # a new optimizer with default hyperparameters: the load must restore them
        defaults, overrides = {}, [{}] * 3
    if kind == "torch":
        return torch_cls(groups(params, overrides), **defaults)
    return ours_cls(groups(params, overrides), **defaults, compile=compile)


def resumed(src_kind, dst_kind, name, compile, grads):
    """(the source's uninterrupted run, its first SPLIT steps then a fresh dst loaded from its checkpoint)."""
    params = leaves(make_params())
    src = build(src_kind, name, params, compile)
    first = train(src, params, grads[:SPLIT])
    checkpoint = roundtrip(src.state_dict())
    assert plain(checkpoint)
    moved = leaves([p.detach() for p in params])  # the model's weights, restored separately
    dst = build(dst_kind, name, moved, compile, fresh=True)
    dst.load_state_dict(checkpoint)
    for restored, saved in zip(dst.param_groups, src.param_groups):
        assert {k: v for k, v in restored.items() if k != "params"} == \
               {k: v for k, v in saved.items() if k != "params"}
    full = first + train(src, params, grads[SPLIT:])  # the source itself goes on
    return full, first + train(dst, moved, grads[SPLIT:])


@pytest.mark.parametrize("name,compile", RUNS, ids=RUN_IDS)
def test_ours_into_ours_continues_exactly(name, compile):
    full, resumed_run = resumed("ours", "ours", name, compile, make_grads(STEPS))
    assert max_rel_diff(resumed_run, full) == 0.0


@pytest.mark.parametrize("name,compile", RUNS, ids=RUN_IDS)
def test_torch_into_ours_continues(name, compile):
    full, resumed_run = resumed("torch", "ours", name, compile, make_grads(STEPS))
    assert max_rel_diff(resumed_run, full) <= CROSS_TOL


@pytest.mark.parametrize("name,compile", RUNS, ids=RUN_IDS)
def test_ours_into_torch_continues(name, compile):
    full, resumed_run = resumed("ours", "torch", name, compile, make_grads(STEPS))
    assert max_rel_diff(resumed_run, full) <= CROSS_TOL


@pytest.mark.parametrize("name", list(CASES))
def test_state_dict_is_torchs(name):
    # after the same steps, ours and torch's state_dicts have the same groups (keys and
    # values), the same param indices, the same state keys, dtypes and shapes, and values
    # equal up to rounding (step counts exactly)
    grads = make_grads(SPLIT)
    ours_params, torch_params = leaves(make_params()), leaves(make_params())
    ours, ref = build("ours", name, ours_params), build("torch", name, torch_params)
    train(ours, ours_params, grads)
    train(ref, torch_params, grads)
    assert_state_dicts_close(ours.state_dict(), ref.state_dict(), rtol=1e-12)
    for idx, entry in ref.state_dict()["state"].items():
        if "step" in entry:
            assert torch.equal(ours.state_dict()["state"][idx]["step"], entry["step"])


def test_checkpoint_before_first_step_loads_into_torch():
    # our state exists before the first step; torch's initialises lazily: loading ours
    # (zero moments, step 0) into torch's gives the same trajectory as a fresh torch run
    grads = make_grads(SPLIT)
    ours = adapters.Adam(leaves(make_params()), lr=0.1, amsgrad=True)
    params = leaves(make_params())
    ref = torch.optim.Adam(params, lr=0.1, amsgrad=True)
    ref_run = train(ref, params, grads)
    params = leaves(make_params())
    fresh = torch.optim.Adam(params, lr=0.1, amsgrad=True)
    fresh.load_state_dict(roundtrip(ours.state_dict()))
    assert max_rel_diff(train(fresh, params, grads), ref_run) == 0.0


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_uneven_step_counts_into_compiled_group(compile):
    # the sometimes-None param shares a group, so its step count lags the others: a
    # compiled group cannot keep one count per bucket and must continue per param
    layout = [[0, 1, SOMETIMES], [2, 3]]
    overrides = [dict(lr=0.1), dict(weight_decay=0.1)]
    grads = make_grads(STEPS)
    params = leaves(make_params())
    src = torch.optim.Adam(groups(params, overrides, layout), lr=1e-2)
    first = train(src, params, grads[:SPLIT])
    steps = {int(e["step"]) for e in src.state_dict()["state"].values()}
    assert len(steps) == 2
    moved = leaves([p.detach() for p in params])
    dst = adapters.Adam(groups(moved, [{}, {}], layout), compile=compile)
    dst.load_state_dict(roundtrip(src.state_dict()))
    full = first + train(src, params, grads[SPLIT:])
    assert max_rel_diff(first + train(dst, moved, grads[SPLIT:]), full) <= CROSS_TOL


def my_opt(lr=1e-3, clip=1.0, weight_decay=0.0):
    return fo.chain(fo.clip_by_global_norm(clip), fo.adamw(lr=lr, weight_decay=weight_decay))


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_user_factory_round_trip(compile):
    overrides = [dict(lr=0.1, clip=0.5), dict(weight_decay=0.1), {}]
    grads = make_grads(STEPS, none_every=None)  # a compiled chain retraces when None leaves come and go

    def make(params, fresh=False):
        return adapters.FunctionalOptimizer(groups(params, [{}] * 3 if fresh else overrides), my_opt,
                                            lr=1e-2, compile=compile)

    params = leaves(make_params())
    src = make(params)
    first = train(src, params, grads[:SPLIT])
    checkpoint = roundtrip(src.state_dict())
    assert plain(checkpoint)
    # the state of a custom chain, per param index, by state names
    assert {"ClipByGlobalNormState.global_norm", "ScaleByAdamState.mu"} <= set(checkpoint["state"][0])
    moved = leaves([p.detach() for p in params])
    dst = make(moved, fresh=True)
    dst.load_state_dict(checkpoint)
    assert [g["clip"] for g in dst.param_groups] == [0.5, 1.0, 1.0]
    full = first + train(src, params, grads[SPLIT:])
    assert max_rel_diff(first + train(dst, moved, grads[SPLIT:]), full) == 0.0


def test_named_params_round_trip_and_cross_load():
    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()

    x = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def run(opt, net, steps):
        for _ in range(steps):
            opt.zero_grad()
            net(x).pow(2).mean().backward()
            opt.step()
        return [p.detach().clone() for p in net.parameters()]

    ours_net, torch_net = model(), model()
    ours = adapters.AdamW(ours_net.named_parameters(), lr=0.05)
    ref = torch.optim.AdamW(torch_net.named_parameters(), lr=0.05)
    run(ours, ours_net, 5)
    run(ref, torch_net, 5)
    names = ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert ours.state_dict()["param_groups"][0]["param_names"] == names
    assert_state_dicts_close(ours.state_dict(), ref.state_dict(), rtol=1e-12)
    # torch's named checkpoint into ours and back again
    into_ours = adapters.AdamW(ours_net.named_parameters())
    into_ours.load_state_dict(roundtrip(ref.state_dict()))
    assert into_ours.param_groups[0]["param_names"] == names and into_ours.param_groups[0]["lr"] == 0.05
    into_torch = torch.optim.AdamW(torch_net.named_parameters())
    into_torch.load_state_dict(roundtrip(into_ours.state_dict()))
    assert_state_dicts_close(into_torch.state_dict(), ref.state_dict())
