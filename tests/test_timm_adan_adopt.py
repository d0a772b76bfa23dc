"""``fo.timm.adan`` / ``adopt`` / ``nadamw`` / ``sgdw`` and ``adapters.timm.Adan`` / ``Adopt`` /
``NAdamW`` / ``SGDW`` against timm 1.0.31's own trajectories, and every registry name that
builds them (adan, adanw, cadan, cadanw, adopt, adoptw, adoptc, cadopt, cadoptw, cadoptc,
nadamw, nadamc, cnadamw, cnadamc, sgdw, sgdc, csgdw, csgdc and the alias nesterovw).

The reference (``tests/reference/timm_adan_adopt.pt``) was recorded from the real
``timm.optim`` (its single-tensor path) by ``tests/reference/generate_timm_adan_adopt.py``
(timm is never imported here): float64 params (0-d, 1-D, 2-D, 4-D; the 1-D one without a
gradient at steps 0 and 3, exactly zero gradient entries) after every step, timm's
state_dicts after step 3 and at the end, its signatures, registry entries and what its
factory builds. Tolerance: 1e-12 relative in float64 (achieved: <= 6e-16; the differences
are a few roundings, e.g. ``p + (p (1 - r) - p)`` for ``p.mul_(1 - r)``).
"""

from __future__ import annotations

import copy
import inspect
import math
import pathlib

import pytest
import torch

import functional_optim as fo
from adapters import timm as optim

REF = torch.load(pathlib.Path(__file__).parent / "reference" / "timm_adan_adopt.pt", weights_only=True)
TOL = 1e-12
STEPS, MID = REF["steps"], REF["mid"]
SHAPES = {n: tuple(s) for n, s in REF["shapes"].items()}
CLASSES = {"Adan": optim.Adan, "Adopt": optim.Adopt, "NAdamW": optim.NAdamW, "SGDW": optim.SGDW}
ALIASES = {"Adan": fo.timm.adan, "Adopt": fo.timm.adopt, "NAdamW": fo.timm.nadamw, "SGDW": fo.timm.sgdw}
CASES = [(name, i) for name, cases in REF["cases"].items() for i in range(len(cases))]
IDS = [f"{name}-{REF['cases'][name][i]['kwargs']}-{REF['cases'][name][i]['set_lr']}" for name, i in CASES]


def _grads(t: int) -> list[torch.Tensor | None]:
    return [None if t in REF["no_grad"].get(n, []) else REF["grads"][t][n].clone() for n in SHAPES]


def _unflat(vec: torch.Tensor) -> list[torch.Tensor]:
    out, i = [], 0
    for s in SHAPES.values():
        n = math.prod(s)
        out.append(vec[i:i + n].reshape(s).clone())
        i += n
    return out


def _flat(ps) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in ps])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _assert_state_dict_equal(ours: dict, ref: dict, ignore: tuple = ()) -> None:
    """Same param-group keys and values (but ``ignore``), same per-param keys in order,
    tensors of the same dtype and shape equal to TOL, other values equal (and of one type)."""
    assert len(ours["param_groups"]) == len(ref["param_groups"])
    for a, b in zip(ours["param_groups"], ref["param_groups"]):
        assert set(a) == set(b), (sorted(a), sorted(b))
        for key in set(b) - set(ignore):
            va, vb = a[key], b[key]
            if isinstance(vb, float) or isinstance(va, torch.Tensor) or isinstance(vb, torch.Tensor):
                assert math.isclose(float(va), float(vb), rel_tol=TOL), (key, va, vb)
            else:
                assert type(va) is type(vb) and va == vb, (key, va, vb)
    assert sorted(ours["state"]) == sorted(int(i) for i in ref["state"])
    for i, b in ref["state"].items():
        a = ours["state"][int(i)]
        assert list(a) == list(b), (list(a), list(b))
        for key, vb in b.items():
            va = a[key]
            if isinstance(vb, torch.Tensor):
                assert isinstance(va, torch.Tensor) and va.dtype == vb.dtype and va.shape == vb.shape, key
                scale = vb.abs().max().clamp_min(1e-300)
                assert ((va - vb).abs().max() / scale).item() <= TOL, key
            else:
                assert type(va) is type(vb) and va == vb, (key, va, vb)


def _alias_kwargs(case: dict) -> dict:
    kwargs = dict(case["kwargs"])
    if case["set_lr"] is not None:  # the constructor's lr is timm's max_lr_snapshot
        kwargs["max_lr_snapshot"], kwargs["lr"] = kwargs["lr"], case["set_lr"]
    return kwargs


def _run_class(name: str, case: dict, start: int = 0, load: dict | None = None):
    values = [REF["init"][n].clone() for n in SHAPES] if start == 0 else _unflat(case["traj"][start - 1])
    params = [torch.nn.Parameter(v) for v in values]
    opt = CLASSES[name](params, **case["kwargs"])
    if case["set_lr"] is not None:
        for group in opt.param_groups:
            group["lr"] = case["set_lr"]
    if load is not None:
        opt.load_state_dict(load)
    traj, mid = [], None
    for t in range(start, STEPS):
        for p, g in zip(params, _grads(t)):
            p.grad = g
        opt.step()
        traj.append(_flat(params))
        if t + 1 == MID:  # a copy: our state_dict's tensors are the live state
            mid = copy.deepcopy(opt.state_dict())
    return opt, traj, mid


def _max_rel(traj: list[torch.Tensor], ref: torch.Tensor, start: int = 0) -> float:
    return max(_rel(a, ref[start + t]) for t, a in enumerate(traj))


@pytest.mark.parametrize("name,i", CASES, ids=IDS)
def test_alias_matches_timm(name, i):
    case = REF["cases"][name][i]
    assert not torch.allclose(case["traj"][-1], _flat(REF["init"][n] for n in SHAPES))
    tx = ALIASES[name](**_alias_kwargs(case))
    ps = [REF["init"][n].clone() for n in SHAPES]
    state = tx.init(ps)
    traj = []
    for t in range(STEPS):
        updates, state = tx.update(_grads(t), state, ps)
        ps = fo.apply_updates(ps, updates)
        traj.append(_flat(ps))
    assert _max_rel(traj, case["traj"]) <= TOL


@pytest.mark.parametrize("name,i", CASES, ids=IDS)
def test_class_matches_timm_and_its_state_dicts(name, i):
    """Trajectory, and the state_dicts after step 3 and at the end equal timm's (so ours
    load into timm); the group's ``foreach`` is the constructor's (timm's was False)."""
    case = REF["cases"][name][i]
    opt, traj, mid = _run_class(name, case)
    assert _max_rel(traj, case["traj"]) <= TOL
    _assert_state_dict_equal(mid, case["mid"], ignore=("foreach",))
    _assert_state_dict_equal(opt.state_dict(), case["final"], ignore=("foreach",))


@pytest.mark.parametrize("name,i", CASES, ids=IDS)
def test_timm_checkpoint_continues_and_ours_round_trips(name, i):
    """timm's state_dict after step 3 loads and the run continues on timm's trajectory to
    timm's final state_dict; ours after step 3 loads into a fresh optimizer and does too."""
    case = REF["cases"][name][i]
    opt, traj, _ = _run_class(name, case, start=MID, load=case["mid"])
    assert _max_rel(traj, case["traj"], MID) <= TOL
    _assert_state_dict_equal(opt.state_dict(), case["final"])
    _, _, ours_mid = _run_class(name, case)
    opt, traj, _ = _run_class(name, case, start=MID, load=ours_mid)
    assert _max_rel(traj, case["traj"], MID) <= TOL
    _assert_state_dict_equal(opt.state_dict(), case["final"], ignore=("foreach",))


def test_cases_cover_the_branches():
    """The recorded state shows what the cases exercise: a param whose state starts late
    (Adopt's per-param step lags behind, Adan's group step does not), SGDW's None buffer."""
    adopt = REF["cases"]["Adopt"][0]["final"]["state"]
    assert float(adopt[1]["step"]) == STEPS - 2 and float(adopt[0]["step"]) == STEPS
    adan = REF["cases"]["Adan"][0]["final"]
    assert adan["param_groups"][0]["step"] == STEPS and set(adan["state"]) == {0, 1, 2, 3}
    assert REF["cases"]["SGDW"][0]["final"]["state"][0] == {"momentum_buffer": None}
    assert any(c["set_lr"] is not None for cases in REF["cases"].values() for c in cases)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_signature_equals_timm(name):
    assert str(inspect.signature(CLASSES[name])) == REF["signatures"][name]
    assert name in optim.__all__


def test_functional_signatures():
    names = {n: [p.name for p in inspect.signature(getattr(fo.timm, n)).parameters.values()]
             for n in ("adan", "adopt", "nadamw", "sgdw")}
    assert names["adan"] == ["lr", "betas", "eps", "weight_decay", "no_prox", "caution"]
    assert names["adopt"] == ["lr", "betas", "eps", "clip_exp", "weight_decay", "decoupled",
                              "corrected_weight_decay", "caution", "maximize", "max_lr_snapshot"]
    assert names["nadamw"] == ["lr", "betas", "eps", "weight_decay", "caution", "corrected_weight_decay",
                               "maximize", "clipping_threshold", "max_lr_snapshot"]
    assert names["sgdw"] == ["lr", "momentum", "dampening", "weight_decay", "nesterov", "caution",
                             "corrected_weight_decay", "maximize", "max_lr_snapshot"]
    assert inspect.signature(fo.timm.adan).parameters["betas"].default == (0.98, 0.92, 0.99)
    assert inspect.signature(fo.timm.adopt).parameters["clip_exp"].default == 0.333
    assert fo.adan is fo.timm.adan and fo.adopt is fo.timm.adopt
    assert fo.nadamw is fo.timm.nadamw and fo.sgdw is fo.timm.sgdw


@pytest.mark.parametrize("name", sorted(REF["registry"]))
def test_registry_binds_and_builds_like_timm(name):
    info, created = REF["registry"][name], REF["created"][name]
    ours = optim.get_optimizer_info(name)
    assert optim.get_optimizer_class(name, bind_defaults=False) is CLASSES[info["cls"]]
    assert dict(ours.defaults or {}) == info["defaults"]
    assert (ours.has_betas, ours.num_betas, ours.has_momentum, ours.has_eps) == (
        info["has_betas"], info["num_betas"], info["has_momentum"], info["has_eps"])
    assert name in optim.list_optimizers()
    model = torch.nn.Linear(3, 2)
    opt = optim.create_optimizer_v2(model, name, lr=0.01, weight_decay=0.05)
    assert type(opt).__name__ == created["cls"]
    group = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
    assert group == created["group"]


def test_adan_counts_a_group_step_without_gradients_and_restarts():
    """timm's Adan counts a group's step even when no param has a gradient (its bias
    corrections use it), and restart_opt zeroes the moments and the step."""
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    opt = optim.Adan([{"params": [a]}, {"params": [b]}], lr=0.1)
    a.grad = torch.tensor([1.0, -2.0])
    opt.step()
    opt.step()  # b never had a gradient
    sd = opt.state_dict()
    assert [g.get("step") for g in sd["param_groups"]] == [2, 2] and list(sd["state"]) == [0]
    b.grad = torch.ones(3)
    opt.step()
    assert opt.state_dict()["param_groups"][1]["step"] == 3
    # bias corrections at step 3 for b's first update: exp_avg = 0.02 g, 1 - 0.98**3
    assert torch.allclose(opt.state_dict()["state"][1]["exp_avg"], torch.full((3,), 0.02))
    neg = opt.state_dict()["state"][0]["neg_pre_grad"].clone()
    opt.restart_opt()
    sd = opt.state_dict()
    assert all(float(sd["state"][i]["exp_avg"].abs().sum()) == 0 for i in (0, 1))
    assert torch.equal(sd["state"][0]["neg_pre_grad"], neg)
    assert all("step" not in g for g in sd["param_groups"])


def test_sgdw_without_momentum_lists_a_none_buffer():
    """As timm, a stepped param of a momentum-free SGDW has ``momentum_buffer: None`` (and
    an unstepped one no state); caution then has no effect (timm applies it to momentum)."""
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = optim.SGDW([a, b], lr=0.5, caution=True)
    a.grad = torch.tensor([1.0, -1.0])
    opt.step()
    assert opt.state_dict()["state"] == {0: {"momentum_buffer": None}}
    assert torch.equal(a.detach(), torch.tensor([0.5, 1.5]))


BAD = [
    (optim.Adan, dict(lr=-1.0), "Invalid learning rate: -1.0", "lr"),
    (optim.Adan, dict(eps=-1.0), "Invalid epsilon value: -1.0", "eps"),
    (optim.Adan, dict(betas=(0.9, 0.9, 1.0)), "Invalid beta parameter at index 2: 1.0", "beta"),
    (optim.Adan, dict(weight_decay=-0.1), "Invalid weight_decay value: -0.1", "weight_decay"),
    (optim.Adopt, dict(lr=-1.0), "Invalid learning rate: -1.0", "lr"),
    (optim.Adopt, dict(betas=(1.0, 0.9)), "Invalid beta parameter at index 0: 1.0", "beta"),
    (optim.Adopt, dict(weight_decay=-0.1), "Invalid weight_decay value: -0.1", "weight_decay"),
    (optim.Adopt, dict(lr=0.0, decoupled=True, corrected_weight_decay=True),
     "Corrected weight decay requires a positive max lr", "lr"),
    (optim.NAdamW, dict(eps=-1.0), "Invalid epsilon value: -1.0", "eps"),
    (optim.NAdamW, dict(weight_decay=-0.1), "Invalid weight_decay value: -0.1", "weight_decay"),
    (optim.SGDW, dict(momentum=-0.5), "Invalid momentum value: -0.5", "momentum"),
    (optim.SGDW, dict(nesterov=True), "Nesterov momentum requires a momentum and zero dampening", "nesterov"),
    (optim.SGDW, dict(lr=-1.0), "Invalid learning rate: -1.0", "lr"),
]


@pytest.mark.parametrize("cls,kwargs,message,name", BAD, ids=[f"{b[0].__name__}-{b[3]}-{i}" for i, b in enumerate(BAD)])
def test_bad_arguments_raise_naming_the_argument(cls, kwargs, message, name):
    with pytest.raises(ValueError) as err:
        cls([torch.nn.Parameter(torch.zeros(2))], **kwargs)
    assert str(err.value).startswith(message) and name in str(err.value)
    functional = ALIASES[cls.__name__]
    with pytest.raises(ValueError, match=name):
        functional(**kwargs)


def test_transform_argument_errors():
    with pytest.raises(ValueError, match="b3"):
        fo.scale_by_adan(b3=1.0)
    with pytest.raises(TypeError, match="caution"):
        fo.scale_by_adan(caution=1)
    with pytest.raises(ValueError, match="clip_exp"):
        fo.scale_by_adopt(clip_exp=-1.0)
    with pytest.raises(ValueError, match="params"):
        tx = fo.scale_by_adopt(weight_decay=0.1)
        tx.update([torch.ones(2)], tx.init([torch.ones(2)]))
    with pytest.raises(ValueError, match="weight_decay"):
        fo.add_proximal_weight_decay(-0.1, 0.1)
    with pytest.raises(ValueError, match="betas"):
        fo.timm.adan(betas=(0.9, 0.9))
    with pytest.raises(ValueError, match="max_lr_snapshot"):
        fo.timm.sgdw(lr=lambda t: 0.1, corrected_weight_decay=True, weight_decay=0.1)
    with pytest.raises(ValueError, match="capturable"):
        optim.Adopt([torch.nn.Parameter(torch.zeros(2))], capturable=True)
