"""``fo.timm.lion`` / ``laprop`` / ``mars`` and ``adapters.timm.Lion`` / ``LaProp`` / ``Mars``
against timm 1.0.31's own trajectories.

The reference (``tests/reference/timm_lion_laprop_mars.pt``) was recorded from the real
``timm.optim`` by ``tests/reference/generate_timm_lion_laprop_mars.py`` (timm is never
imported here): float64 params (0-d, 1-D, 2-D, 4-D; one gradient entry exactly zero at
every step) after every step, timm's state_dicts after step 3 and at the end, its
signatures. Cases that change the group's lr between steps run the functional alias
rebuilt with each step's lr (the state carries over).

Tolerance: 1e-12 relative in float64 (both sides compute in float64). Measured (largest
over the cases, functional and class): Lion 2.3e-17, and bit for bit without weight decay
(the same ``lerp`` roundings; the sign of the exactly zero entry is 0 on both sides);
LaProp 3.8e-16, Mars 1.9e-16 (a few roundings: the decays applied as one update, Mars's
first moment as ``lerp``).
"""

from __future__ import annotations

import inspect
import math
import pathlib

import pytest
import torch

import functional_optim as fo
from adapters import timm as optim

REF = torch.load(pathlib.Path(__file__).parent / "reference" / "timm_lion_laprop_mars.pt", weights_only=True)
TOL = 1e-12
STEPS, MID = REF["steps"], REF["mid"]
SHAPES = {n: tuple(s) for n, s in REF["shapes"].items()}
NAMES = {"lion": (optim.Lion, fo.timm.lion), "laprop": (optim.LaProp, fo.timm.laprop),
         "mars": (optim.Mars, fo.timm.mars)}
CASES = [(key, i) for key in NAMES for i in range(len(REF[key]))]


def _ids(cases):
    return [f"{key}{i}-{REF[key][i]['kwargs']}" + ("-lrs" if REF[key][i]["lrs"] else "") for key, i in cases]


def _unflat(vec: torch.Tensor) -> list[torch.Tensor]:
    out, i = [], 0
    for s in SHAPES.values():
        n = int(torch.Size(s).numel())
        out.append(vec[i:i + n].reshape(s).clone())
        i += n
    return out


def _flat(ps) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in ps])


def _max_rel(ours: list[torch.Tensor], ref: torch.Tensor, start: int = 0) -> float:
    return max(((a - ref[start + t]).abs().max() / ref[start + t].abs().max()).item() for t, a in enumerate(ours))


def _lr(case: dict, t: int) -> float:
    return case["kwargs"]["lr"] if case["lrs"] is None else case["lrs"][t]


def _assert_state_dict_equal(ours: dict, ref: dict, rtol: float = TOL) -> None:
    """Same param-group keys and values, same per-param keys in timm's order, Python numbers
    of the same type and value, tensors of the same dtype and shape equal to ``rtol``."""
    assert len(ours["param_groups"]) == len(ref["param_groups"])
    for a, b in zip(ours["param_groups"], ref["param_groups"]):
        assert set(a) == set(b), (sorted(a), sorted(b))
        for key, vb in b.items():
            assert a[key] == vb, (key, a[key], vb)
    assert sorted(ours["state"]) == sorted(int(i) for i in ref["state"])
    for i, b in ref["state"].items():
        a = ours["state"][int(i)]
        assert list(a) == list(b), (list(a), list(b))
        for key, vb in b.items():
            va = a[key]
            if isinstance(vb, torch.Tensor):
                assert isinstance(va, torch.Tensor) and va.dtype == vb.dtype and va.shape == vb.shape, key
                scale = vb.abs().max().clamp_min(1e-300)
                assert ((va - vb).abs().max() / scale).item() <= rtol, (key, va, vb)
            else:
                assert type(va) is type(vb) and math.isclose(va, vb, rel_tol=rtol), (key, va, vb)


def _functional(key: str, case: dict) -> list[torch.Tensor]:
    factory = NAMES[key][1]
    kwargs = dict(case["kwargs"])
    ps = [REF["init"][n].clone() for n in SHAPES]
    state, traj = None, []
    for t in range(STEPS):
        kwargs["lr"] = _lr(case, t)
        if case["lrs"] is not None and kwargs.get("corrected_weight_decay"):
            kwargs["max_lr_snapshot"] = case["kwargs"]["lr"]
        tx = factory(**kwargs)
        state = tx.init(ps) if state is None else state
        u, state = tx.update(_unflat(REF["grads"][t]), state, ps)
        ps = fo.apply_updates(ps, u)
        traj.append(_flat(ps))
    return traj


def _class(key: str, case: dict, start: int = 0, load: dict | None = None):
    values = [REF["init"][n].clone() for n in SHAPES] if start == 0 else _unflat(case["traj"][start - 1])
    params = [torch.nn.Parameter(v) for v in values]
    opt = NAMES[key][0](params, **case["kwargs"])
    if load is not None:
        opt.load_state_dict(load)
    traj = []
    for t in range(start, STEPS):
        if case["lrs"] is not None:
            opt.param_groups[0]["lr"] = case["lrs"][t]
        for p, g in zip(params, _unflat(REF["grads"][t])):
            p.grad = g
        opt.step()
        traj.append(_flat(params))
    return opt, traj


@pytest.mark.parametrize("key,case", CASES, ids=_ids(CASES))
def test_alias_matches_timm(key, case):
    c = REF[key][case]
    assert not torch.allclose(c["traj"][-1], _flat([REF["init"][n] for n in SHAPES]))
    traj = _functional(key, c)
    assert _max_rel(traj, c["traj"]) <= TOL
    if key == "lion" and not c["kwargs"].get("weight_decay"):
        assert all(torch.equal(a, b) for a, b in zip(traj, c["traj"]))  # the sign's ties exactly as timm's


@pytest.mark.parametrize("key,case", CASES, ids=_ids(CASES))
def test_class_matches_timm_and_its_state_dict(key, case):
    c = REF[key][case]
    opt, traj = _class(key, c)
    assert _max_rel(traj, c["traj"]) <= TOL
    _assert_state_dict_equal(opt.state_dict(), c["final"])


@pytest.mark.parametrize("key,case", CASES, ids=_ids(CASES))
def test_timm_checkpoint_loads_and_continues(key, case):
    """timm's state_dict after step 3 loads into ours; the next steps and the final
    state_dict are timm's."""
    c = REF[key][case]
    opt, traj = _class(key, c, start=MID, load=c["mid"])
    assert _max_rel(traj, c["traj"], MID) <= TOL
    _assert_state_dict_equal(opt.state_dict(), c["final"])


@pytest.mark.parametrize("key", list(NAMES))
def test_own_checkpoint_round_trips(key):
    """Our state_dict after step 3 (timm's format, checked above) loads into a fresh
    instance of ours, which then continues on timm's trajectory."""
    c = REF[key][-1]
    ps = [torch.nn.Parameter(REF["init"][n].clone()) for n in SHAPES]
    opt = NAMES[key][0](ps, **c["kwargs"])
    for t in range(MID):
        if c["lrs"] is not None:
            opt.param_groups[0]["lr"] = c["lrs"][t]
        for p, g in zip(ps, _unflat(REF["grads"][t])):
            p.grad = g
        opt.step()
    saved = opt.state_dict()
    _assert_state_dict_equal(saved, c["mid"])
    fresh, traj = _class(key, c, start=MID, load=saved)
    assert _max_rel(traj, c["traj"], MID) <= TOL
    _assert_state_dict_equal(fresh.state_dict(), c["final"])


@pytest.mark.parametrize("name", ["Lion", "LaProp", "Mars"])
def test_signature_is_timms(name):
    assert str(inspect.signature(getattr(optim, name))) == REF["signatures"][name]


@pytest.mark.parametrize("name,cls,bound", [
    ("lion", "Lion", {}), ("clion", "Lion", {"caution": True}), ("lionc", "Lion", {"corrected_weight_decay": True}),
    ("clionc", "Lion", {"caution": True, "corrected_weight_decay": True}),
    ("laprop", "LaProp", {}), ("claprop", "LaProp", {"caution": True}),
    ("lapropc", "LaProp", {"corrected_weight_decay": True}),
    ("mars", "Mars", {}), ("cmars", "Mars", {"caution": True}),
])
def test_registry_names_build_our_classes(name, cls, bound):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    opt = optim.create_optimizer_v2(model, name, lr=0.01, weight_decay=0.05)
    assert type(opt) is getattr(optim, cls)
    group = opt.param_groups[0]
    for flag in ("caution", "corrected_weight_decay"):
        if flag in group:
            assert group[flag] is bound.get(flag, False), (name, flag)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.05]  # timm's no-decay group (1-D params) first


def test_state_assignment_goes_to_the_params_branch():
    """``opt.state[p] = entry`` (timm's per-param format) for Mars: a matrix's entry goes to
    the MARS branch, a bias's to the AdamW fallback; the run then continues on timm's
    trajectory and exports the same entries."""
    c = REF["mars"][0]
    params = [torch.nn.Parameter(v) for v in _unflat(c["traj"][MID - 1])]
    opt = optim.Mars(params, **c["kwargs"])
    for i, p in enumerate(params):
        opt.state[p] = c["mid"]["state"][i]
    _assert_state_dict_equal(opt.state_dict(), c["mid"])
    for t in range(MID, STEPS):
        for p, g in zip(params, _unflat(REF["grads"][t])):
            p.grad = g
        opt.step()
    assert _max_rel([_flat(params)], c["traj"], STEPS - 1) <= TOL
    _assert_state_dict_equal(opt.state_dict(), c["final"])


@pytest.mark.parametrize("build,match", [
    (lambda: optim.Lion([torch.zeros(1)], lr=-1.0), "lr must be >= 0"),
    (lambda: optim.Lion([torch.zeros(1)], betas=(1.0, 0.9)), r"betas\[0\] must be in \[0, 1\)"),
    (lambda: optim.Lion([torch.zeros(1)], lr=0.0, corrected_weight_decay=True), "lr must be > 0 with corrected"),
    (lambda: optim.LaProp([torch.zeros(1)], eps=-1.0), "eps must be >= 0"),
    (lambda: optim.LaProp([torch.zeros(1)], betas=(0.9, 1.5)), r"betas\[1\] must be in \[0, 1\)"),
    (lambda: optim.Mars([torch.zeros(1)], mars_type="sgd"), "mars_type must be 'adamw' or 'lion'"),
    (lambda: optim.Mars([torch.zeros(1)], eps=-1.0), "eps must be >= 0"),
    (lambda: fo.timm.lion(betas=(0.9,)), "betas must be a pair"),
    (lambda: fo.timm.laprop(weight_decay=-0.1), "weight_decay"),
    (lambda: fo.timm.mars(mars_type="adam"), "mars_type must be one of"),
    (lambda: fo.timm.mars(lr_1d_factor=-1.0), "lr_1d_factor"),
    (lambda: fo.timm.mars(betas_1d=(0.9, 1.0)), "beta parameter at index 1"),
    (lambda: fo.scale_by_laprop(-0.1), "learning_rate"),
    (lambda: fo.mars_gradient_correction(max_norm=0.0), "max_norm"),
    (lambda: fo.add_decoupled_weight_decay_after_step(0.1, 0.1, max_learning_rate=0.0), "max_learning_rate"),
])
def test_bad_arguments_name_the_argument(build, match):
    with pytest.raises(ValueError, match=match):
        build()
