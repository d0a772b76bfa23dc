"""``optimizer.state`` as torch.optim's, checked live against torch.optim step by step.

The drop-ins (AdamW, SGD with momentum, Adagrad) and torch's optimizers get the same
float64 params and gradients (one param's gradient is None on steps 0, 3, 6, ...) and
the same edits of ``opt.state``: in place on the returned tensors, one key assigned, a
whole entry assigned, an entry deleted, the state cleared; a structural hyperparameter
change (weight decay from 0) rebuilds our transform in between. After every step the
listed params, their keys and values, and the params agree to 1e-12 relative (step
counts exactly). Eager runs use torch's fused kernels (the drop-ins' default) or the
functional update (``fused=False``); the compiled run has a flat-engine group and a
group that falls back to per-param compiled leaves. Also: ``FunctionalOptimizer``'s
state in our names, and the tools that rely on the mapping: DCP's
``get/set_optimizer_state_dict`` and ``ZeroRedundancyOptimizer.load_state_dict``.
"""

from __future__ import annotations

import copy
import socket

import pytest
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
from torch.distributed.optim import ZeroRedundancyOptimizer

import adapters
import functional_optim as fo
from adapter_harness import SOMETIMES, groups, leaves, make_grads, make_params, max_rel_diff, train

TOL = 1e-12  # ours vs torch's rounding (fused or functional kernels vs torch's for-loop)

CASES = {
    "adamw": (adapters.AdamW, torch.optim.AdamW, dict(lr=0.05), "exp_avg"),
    "sgd-momentum": (adapters.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9), "momentum_buffer"),
    "adagrad": (adapters.Adagrad, torch.optim.Adagrad, dict(lr=0.05, initial_accumulator_value=0.1), "sum"),
}
RUNS = [(name, mode) for name in CASES for mode in ("fused", "functional")] + [("adamw", "compiled")]
# the sometimes-None param shares group 0, so that group's flat engine falls back to
# per-param compiled leaves at the first step; group 1 stays flat
LAYOUT = [[0, 1, SOMETIMES], [2, 3]]


def build(name, mode, ours_params, torch_params):
    ours_cls, torch_cls, kwargs, _ = CASES[name]
    overrides = [dict(lr=0.1), dict(weight_decay=0.0)]
    extra = {"fused": False} if mode == "functional" else {"compile": True} if mode == "compiled" else {}
    return (ours_cls(groups(ours_params, overrides, LAYOUT), **kwargs, **extra),
            torch_cls(groups(torch_params, overrides, LAYOUT), **kwargs))


def assert_state_like(ours, ref, ours_params, torch_params):
    """Same listed params (``in``, ``len``, iteration, ``get``), keys and values."""
    listed = [i for i, p in enumerate(torch_params) if p in ref.state]
    assert [i for i, p in enumerate(ours_params) if p in ours.state] == listed
    assert len(ours.state) == len(ref.state) == len(listed)
    position = {id(p): i for i, p in enumerate(ours_params)}
    assert sorted(position[id(p)] for p in ours.state) == listed
    assert sorted(position[id(p)] for p, _ in ours.state.items()) == listed
    for i, p in enumerate(ours_params):
        if i not in listed:
            assert ours.state.get(p) is None and ours.state.get(p, "absent") == "absent"
            continue
        a, b = ours.state.get(p), ref.state[torch_params[i]]
        assert sorted(a) == sorted(b), (i, sorted(a), sorted(b))
        for key, value in b.items():
            if key == "step":
                assert torch.equal(a[key], value), (i, a[key], value)
            else:
                assert a[key].dtype == value.dtype and max_rel_diff([[a[key]]], [[value]]) <= TOL, (i, key)


@pytest.mark.parametrize("name,mode", RUNS, ids=[f"{n}-{m}" for n, m in RUNS])
def test_state_mapping_reads_and_writes_like_torch(name, mode):
    key = CASES[name][3]
    # compiled: the None gradient on step 0 only (every pattern of None leaves is one more graph)
    grads = make_grads(14, none_every=100 if mode == "compiled" else 3)
    ours_params, torch_params = leaves(make_params()), leaves(make_params())
    ours, ref = build(name, mode, ours_params, torch_params)
    both = [(ours, ours_params), (ref, torch_params)]
    trajectory = {id(ours): [], id(ref): []}

    def steps(start, stop):
        for opt, params in both:
            trajectory[id(opt)] += train(opt, params, grads[start:stop])
        assert max_rel_diff(trajectory[id(ours)], trajectory[id(ref)]) <= TOL
        assert_state_like(ours, ref, ours_params, torch_params)

    assert_state_like(ours, ref, ours_params, torch_params)  # empty (Adagrad: full) before any step
    steps(0, 1)  # the None-grad param is not listed yet
    steps(1, 3)
    for opt, _ in both:  # weight decay from 0: our group 1 is rebuilt (a new transform), its state kept
        opt.param_groups[1]["weight_decay"] = 0.05
    steps(3, 5)

    gen = torch.Generator().manual_seed(7)
    new_value = torch.rand(4, 3, generator=gen, dtype=torch.float64)
    for opt, params in both:
        opt.state[params[0]][key].mul_(0.5)  # in place on the returned tensor
        opt.state[params[2]][key] = new_value.clone()  # one key
        # a whole entry (the step kept: a flat bucket holds one count for its params)
        opt.state[params[3]] = {k: v if k == "step" else v * 1.5 + 0.25
                                for k, v in ref.state[torch_params[3]].items()}
    assert torch.equal(ours.state[ours_params[2]][key], new_value)
    steps(5, 8)

    if name != "adagrad":  # torch's Adagrad cannot step a param whose state was deleted
        for opt, params in both:
            del opt.state[params[1]]  # that param starts afresh at its next step
        assert ours_params[1] not in ours.state
        steps(8, 10)
        for opt, _ in both:
            opt.state.clear()
        assert len(ours.state) == 0
        with pytest.raises(KeyError):  # as a dict's: no state to delete
            del ours.state[ours_params[1]]
        steps(10, 12)
    else:
        steps(8, 12)


def test_flat_bucket_shares_its_step_count():
    # a flat bucket keeps one step count for its params: assigning one param's step sets
    # it for the bucket (how ZeroRedundancyOptimizer's load assigns every param in turn)
    params = leaves(make_params(shapes=[(3,), (2, 2)]))
    opt = adapters.AdamW(params, lr=0.1, compile=True)
    engine = opt._groups[0].engine
    assert engine.kind == "flat"
    for p in params:
        opt.state[p] = {"step": torch.tensor(4.0), "exp_avg": torch.full(p.shape, 0.5),
                        "exp_avg_sq": torch.full(p.shape, 2.0)}
    assert opt._groups[0].engine is engine  # loaded in place: no new engine, no recompilation
    bucket = engine.layout.buckets[0]
    assert torch.equal(opt.state[params[1]]["exp_avg"], torch.full((2, 2), 0.5, dtype=torch.float64))
    assert opt.state[params[1]]["exp_avg"].data_ptr() != bucket.params.data_ptr()
    opt.state[params[0]]["step"] = torch.tensor(9.0)
    assert [int(opt.state[p]["step"]) for p in params] == [9, 9]
    # the returned moments are views into the flat state: an in-place edit is the state
    opt.state[params[1]]["exp_avg_sq"].fill_(3.0)
    assert all(float(v) == 3.0 for v in opt.state[params[1]]["exp_avg_sq"].flatten())


def test_functional_optimizer_state_in_our_names():
    params = leaves(make_params())
    opt = adapters.FunctionalOptimizer(params, fo.adamw, lr=0.05)
    assert len(opt.state) == 0 and not opt.state and opt.state_dict()["state"] == {}
    train(opt, params, make_grads(1))  # param SOMETIMES has no gradient on step 0
    listed = [i for i, p in enumerate(params) if p in opt.state]
    assert listed == [i for i in range(len(params)) if i != SOMETIMES]
    assert sorted(opt.state_dict()["state"]) == listed
    entry = opt.state[params[1]]
    assert {"ScaleByAdamState.count", "ScaleByAdamState.mu", "ScaleByAdamState.nu"} <= set(entry)
    # the state of param 1 assigned from a torch AdamW run of the same two steps: the
    # next step equals torch's
    ref_params = leaves(make_params())
    ref = torch.optim.AdamW(ref_params, lr=0.05)
    grads = make_grads(3)
    train(ref, ref_params, grads[:2])
    torch_entry = ref.state[ref_params[1]]
    opt.state[params[1]] = {"ScaleByAdamState.count": torch_entry["step"].to(torch.int32),
                            "ScaleByAdamState.mu": torch_entry["exp_avg"].clone(),
                            "ScaleByAdamState.nu": torch_entry["exp_avg_sq"].clone()}
    with torch.no_grad():
        params[1].copy_(ref_params[1])
    train(opt, params, grads[2:])
    train(ref, ref_params, grads[2:])
    assert max_rel_diff([[params[1]]], [[ref_params[1]]]) <= TOL
    assert torch.equal(opt.state[params[1]]["ScaleByAdamState.count"], torch.tensor(3, dtype=torch.int32))
    with pytest.raises(KeyError, match="not a parameter"):
        opt.state[torch.nn.Parameter(torch.zeros(1))] = {}
    with pytest.raises(ValueError, match="shape"):  # checked before anything changes
        opt.state[params[1]]["ScaleByAdamState.mu"] = torch.zeros(7)
    assert torch.equal(opt.state[params[1]]["ScaleByAdamState.count"], torch.tensor(3, dtype=torch.int32))


# -- tools that read and write the mapping -------------------------------------------------

def net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()


X = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


def run(opt, model, steps):
    out = []
    for _ in range(steps):
        opt.zero_grad()
        model(X).pow(2).mean().backward()
        opt.step()
        out.append([p.detach().clone() for p in model.parameters()])
    return out


def assert_dcp_close(ours, ref, rtol=TOL):
    assert sorted(ours["state"]) == sorted(ref["state"])
    for fqn, entry in ref["state"].items():
        assert sorted(ours["state"][fqn]) == sorted(entry)
        for key, value in entry.items():
            assert max_rel_diff([[ours["state"][fqn][key]]], [[value]]) <= rtol, (fqn, key)
    assert [g["params"] for g in ours["param_groups"]] == [g["params"] for g in ref["param_groups"]]


def test_dcp_get_and_set_optimizer_state_dict_like_torch():
    model, ref_model = net(), net()
    ours = adapters.AdamW(model.parameters(), lr=0.05)
    ref = torch.optim.AdamW(ref_model.parameters(), lr=0.05)
    # an empty state: DCP initialises both with a zero-gradient step at lr 0
    assert_dcp_close(get_optimizer_state_dict(model, ours), get_optimizer_state_dict(ref_model, ref))
    assert [int(e["step"]) for e in ours.state.values()] == [1] * 4
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref_model.parameters()))
    assert max_rel_diff(run(ours, model, 3), run(ref, ref_model, 3)) <= TOL
    checkpoint = get_optimizer_state_dict(ref_model, ref)
    assert_dcp_close(get_optimizer_state_dict(model, ours), checkpoint)
    # torch's checkpoint into a fresh drop-in (other hyperparameters): both go on alike
    fresh_model = net(1)
    fresh_model.load_state_dict(ref_model.state_dict())
    fresh = adapters.AdamW(fresh_model.parameters(), lr=1e-3)
    set_optimizer_state_dict(fresh_model, fresh, checkpoint)
    assert fresh.param_groups[0]["lr"] == 0.05
    assert max_rel_diff(run(fresh, fresh_model, 3), run(ref, ref_model, 3)) <= TOL


def test_dcp_round_trip_of_a_functional_optimizer():
    model = net()
    src = adapters.FunctionalOptimizer(model.parameters(), fo.adamw, lr=0.05)
    run(src, model, 3)
    checkpoint = get_optimizer_state_dict(model, src)
    assert "ScaleByAdamState.mu" in checkpoint["state"]["0.weight"]
    copy_model = net(1)
    copy_model.load_state_dict(model.state_dict())
    dst = adapters.FunctionalOptimizer(copy_model.parameters(), fo.adamw, lr=1e-3)
    set_optimizer_state_dict(copy_model, dst, checkpoint)
    assert max_rel_diff(run(dst, copy_model, 3), run(src, model, 3)) == 0.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_zero_redundancy_optimizer_loads_through_state_assignment():
    # ZeroRedundancyOptimizer.load_state_dict assigns ``optim.state[p] = entry`` (then each
    # 0-d value again): torch's checkpoint loads into the drop-in (a flat engine's buckets:
    # test_flat_bucket_shares_its_step_count)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        ref_model = net()
        ref = ZeroRedundancyOptimizer(ref_model.parameters(), optimizer_class=torch.optim.AdamW, lr=0.05)
        run(ref, ref_model, 3)
        ref.consolidate_state_dict()
        checkpoint = copy.deepcopy(ref.state_dict())
        weights = copy.deepcopy(ref_model.state_dict())
        expected = run(ref, ref_model, 2)
        model = net(1)
        model.load_state_dict(weights)
        ours = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=adapters.AdamW, lr=1e-3)
        ours.load_state_dict(copy.deepcopy(checkpoint))
        assert len(ours.optim.state) == 4 and ours.optim.param_groups[0]["lr"] == 0.05
        for i, p in enumerate(model.parameters()):
            saved = checkpoint["state"][i]
            assert sorted(ours.optim.state[p]) == sorted(saved)
            assert all(torch.equal(ours.optim.state[p][k], v) for k, v in saved.items())
        assert max_rel_diff(run(ours, model, 2), expected) <= TOL
    finally:
        dist.destroy_process_group()
