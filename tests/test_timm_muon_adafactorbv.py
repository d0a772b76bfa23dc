"""``fo.timm.muon`` / ``fo.timm.adafactor_big_vision`` and ``adapters.timm.Muon`` /
``AdafactorBigVision`` against timm 1.0.31's own trajectories.

The reference (``tests/reference/timm_muon_adafactorbv.pt``) was recorded from the real
``timm.optim`` by ``tests/reference/generate_timm_muon_adafactorbv.py`` (timm is never
imported here): float64 params stepping on fixed float64 gradients (so the bfloat16 parts
see the same inputs on both sides), the lr halved after step ``MID``, the params after
every step, timm's state_dicts, Newton-Schulz outputs, signatures and registry bindings.

Tolerances: bit for bit (``torch.equal``) for what timm computes in bfloat16 (the
Newton-Schulz iteration, the bfloat16 momentum ``exp_avg``); 1e-12 relative for the float64
params and moments (the differences are a few roundings, e.g. ``p * (1 - r) - p`` added
to the step where timm multiplies then adds).
"""

from __future__ import annotations

import inspect
import math
import pathlib

import pytest
import torch

import functional_optim as fo
from adapters import timm as optim
from adapters.timm import create_optimizer_v2

REF = torch.load(pathlib.Path(__file__).parent / "reference" / "timm_muon_adafactorbv.pt", weights_only=True)
TOL = 1e-12
STEPS, MID = REF["steps"], REF["mid"]


def _shapes(which: str) -> dict[str, tuple]:
    return {n: tuple(s) for n, s in REF["shapes"][which].items()}


def _unflat(vec: torch.Tensor, shapes: dict[str, tuple]) -> list[torch.Tensor]:
    out, i = [], 0
    for s in shapes.values():
        n = int(torch.Size(s).numel())
        out.append(vec[i:i + n].reshape(s).clone())
        i += n
    return out


def _flat(ps) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in ps])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _max_rel(ours: list[torch.Tensor], ref: torch.Tensor, start: int = 0) -> float:
    return max(_rel(a, ref[start + t]) for t, a in enumerate(ours))


def _grads(which: str, t: int) -> list[torch.Tensor]:
    return _unflat(REF["grads"][which][t], _shapes(which))


def _init(which: str) -> list[torch.Tensor]:
    return [REF["init"][which][n].clone() for n in _shapes(which)]


def _assert_state_dict_equal(ours: dict, ref: dict, rtol: float = TOL) -> None:
    """Same param-group keys and values, same per-param keys in order, tensors of the same
    dtype and shape, bfloat16 ones equal bit for bit, the others equal to ``rtol``."""
    assert len(ours["param_groups"]) == len(ref["param_groups"])
    for a, b in zip(ours["param_groups"], ref["param_groups"]):
        assert list(a) == list(b) or set(a) == set(b), (list(a), list(b))
        for key, vb in b.items():
            va = a[key]
            if isinstance(vb, float):
                assert math.isclose(va, vb, rel_tol=rtol), (key, va, vb)
            else:
                assert va == vb, (key, va, vb)
    assert sorted(ours["state"]) == sorted(int(i) for i in ref["state"])
    for i, b in ref["state"].items():
        a = ours["state"][int(i)]
        assert list(a) == list(b), (i, list(a), list(b))
        for key, vb in b.items():
            va = a[key]
            if isinstance(vb, torch.Tensor):
                assert isinstance(va, torch.Tensor) and va.dtype == vb.dtype and va.shape == vb.shape, key
                if vb.dtype == torch.bfloat16:
                    assert torch.equal(va, vb), key
                else:
                    scale = vb.abs().max().clamp_min(1e-300)
                    assert ((va - vb).abs().max() / scale).item() <= rtol, key
            else:
                assert type(va) is type(vb) and va == vb, (key, va, vb)


def _functional(factory, kwargs: dict, which: str, **extra) -> list[torch.Tensor]:
    """The alias stepped as timm was: a 0-d tensor lr halved after step MID."""
    kwargs = dict(kwargs)
    lr = torch.tensor(float(kwargs.pop("lr", inspect.signature(factory).parameters["lr"].default)),
                      dtype=torch.float64)
    tx = factory(lr=lr, **kwargs, **extra)
    ps = dict(zip(_shapes(which), _init(which)))
    state = tx.init(ps)
    traj = []
    for t in range(STEPS):
        u, state = tx.update(dict(zip(ps, _grads(which, t))), state, ps)
        ps = fo.apply_updates(ps, u)
        traj.append(_flat(ps.values()))
        if t + 1 == MID:
            lr.mul_(0.5)
    return traj


def _make(cls, kwargs: dict, values: list[torch.Tensor], which: str, groups=None):
    params = dict(zip(_shapes(which), (torch.nn.Parameter(v) for v in values)))
    if groups is None:
        return cls(list(params.values()), **kwargs), params
    return cls([{"params": [params[n] for n in names], **extra} for names, extra in groups], **kwargs), params


def _class(cls, kwargs: dict, which: str, groups=None, start: int = 0, load: dict | None = None):
    values = _init(which) if start == 0 else _unflat(load["traj"][start - 1], _shapes(which))
    opt, params = _make(cls, kwargs, values, which, groups)
    if load is not None:  # saved after step MID, before timm's lr was halved
        opt.load_state_dict(load["state_dict"])
        for group in opt.param_groups:
            group["lr"] = group["lr"] * 0.5
    traj = []
    for t in range(start, STEPS):
        for p, g in zip(params.values(), _grads(which, t)):
            p.grad = g
        opt.step()
        traj.append(_flat(params.values()))
        if t + 1 == MID:
            for group in opt.param_groups:
                group["lr"] = group["lr"] * 0.5
    return opt, traj


def _moved(ref: torch.Tensor, which: str) -> bool:
    return not torch.allclose(ref[-1], _flat(_init(which)))


# -- AdafactorBigVision ---------------------------------------------------------------------

BV = REF["bv"]


@pytest.mark.parametrize("case", range(len(BV)), ids=[str(c["kwargs"]) for c in BV])
def test_adafactor_big_vision_matches_timm(case):
    c = BV[case]
    assert _moved(c["traj"], "bv")
    extra = {"max_lr_snapshot": c["kwargs"]["lr"]} if c["kwargs"].get("corrected_weight_decay") else {}
    assert _max_rel(_functional(fo.timm.adafactor_big_vision, c["kwargs"], "bv", **extra), c["traj"]) <= TOL
    opt, traj = _class(optim.AdafactorBigVision, c["kwargs"], "bv")
    assert _max_rel(traj, c["traj"]) <= TOL
    _assert_state_dict_equal(opt.state_dict(), c["final"])


def test_adafactor_big_vision_cases_cover_the_branches():
    """Factored over (1, 0) for the 20x17 matrix and over the channels of the conv, the
    bias and the 3x20 matrix unfactored; the momentum in bfloat16 by default, float32 when
    asked, absent with ``momentum=None``."""
    final = BV[0]["final"]["state"]
    assert final[1]["exp_avg_sq_r"].shape == (1, 17) and final[1]["exp_avg_sq_c"].shape == (20, 1)
    assert final[2]["exp_avg_sq_r"].shape == (1, 16, 2, 2) and final[2]["exp_avg_sq_c"].shape == (18, 1, 2, 2)
    assert "exp_avg_sq" in final[0] and "exp_avg_sq" in final[3]
    assert final[2]["exp_avg"].dtype == torch.bfloat16
    assert BV[7]["final"]["state"][2]["exp_avg"].dtype == torch.float32
    assert "exp_avg" not in BV[6]["final"]["state"][2]


@pytest.mark.parametrize("case", [i for i, c in enumerate(BV) if c["mid"] is not None])
def test_adafactor_big_vision_timm_checkpoint_continues(case):
    """timm's state_dict after step MID (bfloat16 momentum included) loads into ours and
    continues timm's trajectory; ours saves timm's layout (checked against its final one)."""
    c = BV[case]
    opt, traj = _class(optim.AdafactorBigVision, c["kwargs"], "bv", start=MID,
                       load={"traj": c["traj"], "state_dict": c["mid"]})
    assert _max_rel(traj, c["traj"], MID) <= TOL
    _assert_state_dict_equal(opt.state_dict(), c["final"])


def test_adafactor_big_vision_state_dict_round_trip():
    """Ours -> state_dict -> a fresh optimizer continues exactly as the original."""
    kwargs = BV[5]["kwargs"]
    a, _ = _class(optim.AdafactorBigVision, kwargs, "bv")
    sd = a.state_dict()
    params = [torch.nn.Parameter(p.detach().clone()) for g in a.param_groups for p in g["params"]]
    b = optim.AdafactorBigVision(params, **kwargs)
    b.load_state_dict(sd)
    assert b.state_dict()["state"][2]["exp_avg"].dtype == torch.bfloat16
    for p, q in zip((p for g in a.param_groups for p in g["params"]), params):
        p.grad = torch.ones_like(p)
        q.grad = torch.ones_like(q)
    a.step()
    b.step()
    for p, q in zip((p for g in a.param_groups for p in g["params"]), params):
        assert torch.equal(p, q)


def test_adafactor_big_vision_rejects_bad_arguments():
    w = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="float8 dtype not supported"):
        optim.AdafactorBigVision(w, momentum_dtype="float8")
    with pytest.raises(ValueError, match="learning rate"):
        optim.AdafactorBigVision(w, lr=-1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        optim.AdafactorBigVision(w, weight_decay=-0.1)
    with pytest.raises(ValueError, match="positive max lr"):
        optim.AdafactorBigVision(w, lr=0.0, corrected_weight_decay=True)
    with pytest.raises(ValueError, match="decay_offset"):
        fo.timm.adafactor_big_vision(decay_offset=-1)


def test_big_vision_factor_dims_match_timm_rule():
    """The two largest dims (ties: the later one counts as larger), second one >= the size."""
    dims = fo.big_vision_factor_dims
    assert dims((20, 17), 16) == (1, 0)
    assert dims((16, 16), 16) == (0, 1)
    assert dims((18, 16, 2, 2), 16) == (1, 0)
    assert dims((2, 3, 40, 30), 16) == (3, 2)
    assert dims((15, 40), 16) is None and dims((40,), 1) is None


@pytest.mark.parametrize("name", ["adafactorbv", "cadafactorbv", "adafactorbvc", "cadafactorbvc"])
def test_adafactor_big_vision_registry_names(name):
    """create_optimizer_v2 builds our class with timm's bound defaults."""
    ref = REF["registry"][name]
    model = torch.nn.Linear(3, 2)
    opt = create_optimizer_v2(model, name, lr=0.1)
    assert type(opt).__name__ == ref["cls"] == "AdafactorBigVision"
    for key, value in ref["defaults"].items():
        assert opt.param_groups[0][key] == value


# -- Muon ---------------------------------------------------------------------------------

MUON = REF["muon"]
# the cases also run through fo.timm.muon directly (the class runs the same transform;
# bfloat16 matrix products are slow on a loaded CPU): muon, nmuon, adamuon, nadamuon,
# batched convs, every preset option
FUNCTIONAL = (0, 1, 2, 3, 4, 10)


def _muon_id(c: dict) -> str:
    return str(c["kwargs"]) + ("-groups" if c["groups"] else "")


@pytest.mark.parametrize("case", range(len(MUON)), ids=[_muon_id(c) for c in MUON])
def test_muon_matches_timm(case):
    """Params after every step to 1e-12 (the Newton-Schulz outputs are bit for bit timm's:
    the momentum they start from depends on the fixed gradients only); timm's state_dict
    layout and values at the end (momentum buffers, AdaMuon's and AdamW's moments)."""
    c = MUON[case]
    assert _moved(c["traj"], "muon")
    if case in FUNCTIONAL:
        assert _max_rel(_functional(fo.timm.muon, c["kwargs"], "muon"), c["traj"]) <= TOL
    opt, traj = _class(optim.Muon, c["kwargs"], "muon", c["groups"])
    assert _max_rel(traj, c["traj"]) <= TOL
    _assert_state_dict_equal(opt.state_dict(), c["final"])


def test_muon_routes_params_as_timm():
    """timm's routing in the recorded state: the bias, the depthwise conv and the 3x64
    matrix (min dim 3 < 4) to AdamW, the matrices and the conv to Muon; group flags
    override it (use_fallback, use_muon=False)."""
    routed = {i: s["use_muon"] for i, s in MUON[0]["final"]["state"].items()}
    assert routed == {0: False, 1: True, 2: True, 3: True, 4: False, 5: False}
    shapes = list(_shapes("muon").values())
    assert [fo.transforms.newton_schulz_timm.muon_suitable(s) for s in shapes] == list(routed.values())
    grouped = {i: s["use_muon"] for i, s in MUON[-1]["final"]["state"].items()}
    assert grouped == {0: False, 1: True, 2: False, 3: False, 4: False, 5: False}  # (params renumbered by group)


@pytest.mark.parametrize("index", range(len(REF["ns"])))
def test_newton_schulz_is_timms_bit_for_bit(index):
    """timm's bfloat16 iteration (2-D tall and wide, batched 3-D, every preset, safety
    factor and scaled eps) reproduced exactly."""
    c = REF["ns"][index]
    ns = fo.transforms.newton_schulz_timm
    out = ns.newton_schulz_sequence(c["g"], ns.resolve_ns_coefficients(c["coefficients"]), c["steps"], c["eps"],
                                    c["safety_factor"], c["scale_eps"])
    assert out.dtype == torch.float64 and torch.equal(out, c["out"].double())


def test_ns_coefficient_presets_are_timms():
    presets = fo.transforms.newton_schulz_timm.NS_COEFFICIENT_PRESETS
    assert {k: [list(t) for t in v] for k, v in presets.items()} == REF["coefficients"]


@pytest.mark.parametrize("case", [i for i, c in enumerate(MUON) if c["mid"] is not None])
def test_muon_timm_checkpoint_continues(case):
    """timm's state_dict after step MID (routing flags, buffers, float steps) loads into ours
    and continues timm's trajectory to its final state."""
    c = MUON[case]
    opt, traj = _class(optim.Muon, c["kwargs"], "muon", c["groups"], start=MID,
                       load={"traj": c["traj"], "state_dict": c["mid"]})
    assert _max_rel(traj, c["traj"], MID) <= TOL
    _assert_state_dict_equal(opt.state_dict(), c["final"])


def test_muon_state_dict_round_trip():
    """Ours -> state_dict -> a fresh optimizer steps exactly as the original."""
    kwargs, groups = MUON[3]["kwargs"], MUON[12]["groups"]
    a, _ = _class(optim.Muon, kwargs, "muon", groups)
    b, _ = _make(optim.Muon, kwargs, _init("muon"), "muon", groups)
    b.load_state_dict(a.state_dict())
    _assert_state_dict_equal(b.state_dict(), a.state_dict(), rtol=0.0)
    pa = [p for g in a.param_groups for p in g["params"]]
    pb = [p for g in b.param_groups for p in g["params"]]
    with torch.no_grad():
        for p, q in zip(pa, pb):
            q.copy_(p)
            p.grad = torch.ones_like(p)
            q.grad = torch.ones_like(q)
    a.step()
    b.step()
    assert all(torch.equal(p, q) for p, q in zip(pa, pb))


def test_muon_signature_and_errors():
    assert str(inspect.signature(optim.Muon)) == REF["signatures"]["Muon"]
    assert str(inspect.signature(optim.AdafactorBigVision)) == REF["signatures"]["AdafactorBigVision"]
    w = [torch.nn.Parameter(torch.zeros(4, 4))]
    with pytest.raises(ValueError, match="Invalid conv_mode"):
        optim.Muon(w, conv_mode="spatial")
    with pytest.raises(ValueError, match="Invalid algo"):
        optim.Muon(w, algo="adam")
    with pytest.raises(ValueError, match="momentum"):
        optim.Muon(w, momentum=1.0)
    with pytest.raises(ValueError, match="Unknown coefficients preset"):
        optim.Muon(w, ns_coefficients="quartic")
    with pytest.raises(ValueError, match="Invalid scaling function"):
        optim.Muon(w, adjust_lr_fn="rsqrt_in")
    with pytest.raises(ValueError, match="capturable=True is not supported"):
        optim.Muon(w, capturable=True)
    with pytest.warns(FutureWarning, match="adamw_lr is deprecated"):
        opt = optim.Muon(w, lr=0.02, adamw_lr=0.01)
    assert opt.param_groups[0]["fallback_lr_scale"] == 0.5


@pytest.mark.parametrize("name", ["muon", "nmuon", "adamuon", "nadamuon"])
def test_muon_registry_names(name):
    """create_optimizer_v2 builds our class with timm's bound defaults."""
    ref = REF["registry"][name]
    opt = create_optimizer_v2(torch.nn.Linear(3, 2), name, lr=0.1)
    assert type(opt).__name__ == ref["cls"] == "Muon"
    for key, value in ref["defaults"].items():
        assert opt.param_groups[0][key] == value
