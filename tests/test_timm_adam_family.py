"""timm's Adam family (``fo.timm.adabelief``, ``adamp``, ``sgdp``, ``adamw_legacy``,
``nadam_legacy``, ``radam_legacy``, ``rmsprop_tf`` and the ``adapters.timm`` classes) against
timm 1.0.31's own trajectories, recorded by ``reference/generate_timm_adam_family.py`` into
``reference/timm_adam_family.pt`` (timm is never imported here).

Per recorded case: float64 params (1-D, 2-D, 4-D; one param without a gradient at step 2),
7 steps, lr halved before step 3, gradients computed from the current params by the
generator's own ``grads`` function (AdamP/SGDP's projection takes its channel branch on ``w``
and its layer branch on ``conv``). The functional alias and the class must equal timm's params
after every step to ``TOL`` relative (RAdamLegacy: ``TOL_F32``, timm computes it in float32);
the class's state_dict after 4 steps must have timm's keys, types and values, timm's
state_dict must load into the class and continue on timm's trajectory.
"""

from __future__ import annotations

import inspect
import os
import sys

import pytest
import torch

import functional_optim as fo
from adapters import FunctionalOptimizer
from adapters import timm as optim

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "reference"))
from generate_timm_adam_family import grads as make_grads  # noqa: E402  (pure torch, no timm)

REF = torch.load(os.path.join(HERE, "reference", "timm_adam_family.pt"), weights_only=True)
TOL = 1e-14  # relative, float64 (measured: <= 8e-16); timm computes in float64 here
TOL_F32 = 2e-6  # RAdamLegacy (measured 1.5e-7): timm rounds params, grads and moments to float32 every step

FUNCTIONAL = {"AdaBelief": fo.timm.adabelief, "AdamP": fo.timm.adamp, "SGDP": fo.timm.sgdp,
              "AdamWLegacy": fo.timm.adamw_legacy, "NAdamLegacy": fo.timm.nadam_legacy,
              "RAdamLegacy": fo.timm.radam_legacy, "RMSpropTF": fo.timm.rmsprop_tf}
CASES = [(name, i) for name in FUNCTIONAL for i in range(len(REF["cases"][name]))]
NAMES = list(REF["shapes"])


def _id(case):
    name, i = case
    kwargs = REF["cases"][name][i]["kwargs"]
    return f"{name}-" + "-".join(f"{k}={v}" for k, v in kwargs.items() if k != "lr")


def _tol(name: str) -> float:
    return TOL_F32 if name == "RAdamLegacy" else TOL


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _flat(params: dict) -> torch.Tensor:
    return torch.cat([params[n].detach().reshape(-1) for n in NAMES])


def _unflat(vec: torch.Tensor) -> dict:
    out, i = {}, 0
    for n, shape in REF["shapes"].items():
        size = int(torch.Size(shape).numel())
        out[n] = vec[i:i + size].reshape(shape).clone()
        i += size
    return out


def _params0() -> dict:
    return {n: p.clone() for n, p in REF["params0"].items()}


def _run_class(cls, kwargs, params, start: int = 0, opt=None):
    params = {n: torch.nn.Parameter(p.clone()) for n, p in params.items()}
    if opt is None:
        opt = cls(list(params.values()), **kwargs)
    traj = []
    for t in range(start, REF["steps"]):
        if t == REF["lr_change_at"]:
            opt.param_groups[0]["lr"] *= 0.5
        for n, g in make_grads(params, REF["noise"][t], t).items():
            params[n].grad = g
        opt.step()
        traj.append(_flat(params))
    return opt, params, traj


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_functional_equals_timm(case):
    name, i = case
    ref = REF["cases"][name][i]
    kwargs = dict(ref["kwargs"])
    fn = FUNCTIONAL[name]
    if "max_lr_snapshot" in inspect.signature(fn).parameters:
        kwargs["max_lr_snapshot"] = kwargs["lr"]  # timm's snapshot of the constructor lr
    params = _params0()
    tx = fn(**kwargs)
    state = tx.init(params)
    for t in range(REF["steps"]):
        if t == REF["lr_change_at"]:  # the same transform with the new lr, the state kept
            kwargs["lr"] = kwargs["lr"] * 0.5
            tx = fn(**kwargs)
        updates, state = tx.update(make_grads(params, REF["noise"][t], t), state, params)
        params = fo.apply_updates(params, updates)
        assert _rel(_flat(params), ref["traj"][t]) <= _tol(name), f"step {t}"
    # the run is not trivial: every param moved
    assert all(not torch.equal(params[n], REF["params0"][n]) for n in NAMES)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_class_equals_timm(case):
    name, i = case
    ref = REF["cases"][name][i]
    _, _, traj = _run_class(getattr(optim, name), ref["kwargs"], _params0())
    for t, (ours, theirs) in enumerate(zip(traj, ref["traj"])):
        assert _rel(ours, theirs) <= _tol(name), f"step {t}"


def _assert_state_close(ours: dict, theirs: dict, tol: float) -> None:
    assert sorted(ours) == sorted(theirs)
    for key, value in theirs.items():
        mine = ours[key]
        assert type(mine) is type(value), key
        if isinstance(value, torch.Tensor):
            assert mine.shape == value.shape and mine.dtype == value.dtype, key
            if value.dim() == 0 or not value.abs().max() > 0:
                torch.testing.assert_close(mine, value, rtol=tol, atol=0)
            else:
                assert _rel(mine, value) <= tol, key
        elif isinstance(value, float):
            assert abs(mine - value) <= tol * abs(value), key
        else:
            assert mine == value, key


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_state_dict_equals_timm_and_loads(case):
    name, i = case
    ref = REF["cases"][name][i]
    cls = getattr(optim, name)
    load_at = REF["load_at"]
    # ours after load_at steps: timm's per-param state, keys and types (Python int steps or
    # float tensors), and timm's param-group keys
    params = {n: torch.nn.Parameter(p.clone()) for n, p in _params0().items()}
    opt = cls(list(params.values()), **ref["kwargs"])
    for t in range(load_at):
        if t == REF["lr_change_at"]:
            opt.param_groups[0]["lr"] *= 0.5
        for n, g in make_grads(params, REF["noise"][t], t).items():
            params[n].grad = g
        opt.step()
    sd, theirs = opt.state_dict(), ref["state_at_load"]
    assert sorted(opt.param_groups[0]) == ref["group_keys"]
    assert sorted(sd["state"]) == sorted(theirs["state"])
    for idx, entry in theirs["state"].items():
        if name == "RAdamLegacy":  # timm keeps float32 moments; ours are in the param dtype
            entry = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in entry.items()}
        _assert_state_close(sd["state"][idx], entry, 10 * _tol(name))
    for key in ref["kwargs"]:
        assert sd["param_groups"][0][key] == theirs["param_groups"][0][key], key

    # timm's checkpoint loads into ours and continues on timm's trajectory
    start = _unflat(ref["traj"][load_at - 1])
    fresh = cls([torch.nn.Parameter(p.clone()) for p in start.values()], **ref["kwargs"])
    params = {n: torch.nn.Parameter(p.clone()) for n, p in start.items()}
    fresh = cls(list(params.values()), **ref["kwargs"])
    fresh.load_state_dict(theirs)
    traj = []
    for t in range(load_at, REF["steps"]):
        for n, g in make_grads(params, REF["noise"][t], t).items():
            params[n].grad = g
        fresh.step()
        traj.append(_flat(params))
    for t, ours in zip(range(load_at, REF["steps"]), traj):
        assert _rel(ours, ref["traj"][t]) <= _tol(name), f"step {t}"


@pytest.mark.parametrize("name", list(FUNCTIONAL))
def test_signature_equals_timm(name):
    cls = getattr(optim, name)
    assert str(inspect.signature(cls)) == REF["signatures"][name]
    # the functional alias: timm's names, order and defaults without params and foreach/capturable
    ours = [(p.name, p.default) for p in inspect.signature(FUNCTIONAL[name]).parameters.values()
            if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    theirs = [(p.name, p.default) for p in inspect.signature(cls).parameters.values()
              if p.name not in ("params", "foreach", "capturable")]
    assert ours == theirs


def test_namespaces():
    assert fo.adabelief is fo.timm.adabelief and fo.adamp is fo.timm.adamp and fo.sgdp is fo.timm.sgdp
    for name in ("adabelief", "adamp", "sgdp"):
        assert not hasattr(torch.optim, name.capitalize()) and name in fo.__all__
    assert {"AdaBelief", "AdamP", "SGDP", "AdamWLegacy", "NAdamLegacy", "RAdamLegacy", "RMSpropTF"} <= set(optim.__all__)
    assert fo.needs(fo.timm.adamp()) == fo.Needs.MATRIX  # per-channel reductions over each param's shape
    assert fo.needs(fo.timm.adabelief()) == fo.Needs.ELEMENTWISE
    assert fo.needs(fo.timm.adamw_legacy(caution=True)) == fo.Needs.PER_PARAM
    assert fo.needs(fo.timm.rmsprop_tf(momentum=0.9)) == fo.Needs.ELEMENTWISE


def test_cautious_values():
    """The mask: kept where u * g > 0, rescaled by 1 / max(mean, min_scale); state untouched."""
    tx = fo.cautious(fo.identity())
    u, _ = tx.update({"w": torch.tensor([1.0, -2.0, 3.0, 0.0])}, tx.init({"w": torch.zeros(4)}))
    assert torch.equal(u["w"], torch.tensor([4 / 3, -8 / 3, 4.0, 0.0]))
    inner = fo.scale(-1.0)  # always disagrees: mean 0, clamped to min_scale
    tx = fo.cautious(inner, min_scale=0.5)
    u, _ = tx.update({"w": torch.ones(3)}, tx.init({"w": torch.zeros(3)}))
    assert torch.equal(u["w"], torch.zeros(3))
    tx = fo.cautious(fo.trace(0.9))
    state = tx.init({"w": torch.zeros(2)})
    _, state = tx.update({"w": torch.tensor([1.0, 1.0])}, state)
    u, state = tx.update({"w": torch.tensor([1.0, -3.0])}, state)
    assert torch.allclose(state.trace["w"], torch.tensor([1.9, -2.1]))  # the momentum is not masked
    assert torch.allclose(u["w"], torch.tensor([1.9, -2.1]))
    u, state = tx.update({"w": torch.tensor([1.0, 3.0])}, state)  # buf = [2.71, 1.11]: all agree
    assert torch.allclose(u["w"], torch.tensor([2.71, 1.11]))
    u, _ = tx.update({"w": torch.tensor([-5.0, 1.0])}, state)  # buf = [-2.561, 1.999]: both agree
    assert torch.allclose(u["w"], torch.tensor([-2.561, 1.999]))


def test_projection_branches():
    """Channel-orthogonal gradients project per row, layer-orthogonal ones as a whole,
    others are left alone; projected params get the reduced decay ratio."""
    torch.manual_seed(0)
    p = torch.randn(3, 4, dtype=torch.float64)
    g = torch.randn(3, 4, dtype=torch.float64)
    g_row = g - p * (g * p).sum(1, keepdim=True) / (p * p).sum(1, keepdim=True)
    d = torch.randn(3, 4, dtype=torch.float64)
    tx = fo.scale_invariant_projection(fo.stateless(lambda u, _: {"w": d}), delta=0.1, wd_ratio=0.25,
                                       eps=1e-8, weight_decay=1.0)
    state = tx.init({"w": p})
    out = tx.update({"w": g_row}, state, {"w": p})[0]["w"]
    p_n = p / (p.norm(dim=1, keepdim=True) + 1e-8)
    expected = d - p_n * (p_n * d).sum(1, keepdim=True) + 0.25 * p
    torch.testing.assert_close(out, expected, rtol=1e-13, atol=1e-13)
    out = tx.update({"w": g}, state, {"w": p})[0]["w"]  # random: no projection, full decay
    torch.testing.assert_close(out, d + p, rtol=1e-13, atol=1e-13)


def test_compiled_class_equals_eager():
    """compile=True through FunctionalOptimizer (AdamP: per-param leaves, Needs.MATRIX;
    AdamWLegacy with caution: flat buffers with segmented reductions)."""
    for fn, kwargs in ((fo.timm.adamp, dict(lr=0.01, weight_decay=0.1, caution=True)),
                       (fo.timm.adamw_legacy, dict(lr=0.01, caution=True, clipping_threshold=0.5))):
        runs = []
        for compile_step in (False, True):
            params = {n: torch.nn.Parameter(p.clone()) for n, p in _params0().items()}
            opt = FunctionalOptimizer(list(params.values()), fn, compile=compile_step, **kwargs)
            traj = []
            for t in range(2):  # (step 3 drops a gradient: a second compile, 20-30 s cold)
                for n, g in make_grads(params, REF["noise"][t], t).items():
                    params[n].grad = g
                opt.step()
                traj.append(_flat(params))
            runs.append(torch.stack(traj))
        assert _rel(runs[1], runs[0]) <= 1e-12


BAD_TIMM = [
    ("AdaBelief", dict(lr=-1.0), "Invalid learning rate: -1.0", "lr"),
    ("AdaBelief", dict(eps=-1.0), "Invalid epsilon value: -1.0", "eps"),
    ("AdaBelief", dict(betas=(1.0, 0.9)), "Invalid beta parameter at index 0: 1.0", "betas[0]"),
    ("AdamWLegacy", dict(betas=(0.9, -0.1)), "Invalid beta parameter at index 1: -0.1", "betas[1]"),
    ("AdamWLegacy", dict(corrected_weight_decay=True, lr=0.0),
     "Corrected weight decay requires a positive max lr, got 0.0.", "lr"),
    ("NAdamLegacy", dict(lr=-0.1), "Invalid learning rate: -0.1", "lr"),
    ("RMSpropTF", dict(eps=-1.0), "Invalid epsilon: -1.0", "eps"),
    ("RMSpropTF", dict(momentum=-0.5), "Invalid momentum: -0.5", "momentum"),
    ("RMSpropTF", dict(alpha=-0.5), "Invalid alpha value: -0.5", "alpha"),
    ("RMSpropTF", dict(weight_decay=-1), "Invalid weight_decay: -1", "weight_decay"),
]


@pytest.mark.parametrize("name,kwargs,message,arg", BAD_TIMM, ids=[f"{b[0]}-{b[3]}" for b in BAD_TIMM])
def test_bad_arguments_raise_timm_errors(name, kwargs, message, arg):
    with pytest.raises(ValueError) as err:
        getattr(optim, name)([torch.nn.Parameter(torch.zeros(2))], **kwargs)
    text = str(err.value)
    assert text.startswith(message) and arg in text[len(message):]


BAD_FUNCTIONAL = [
    ("adamp", dict(delta=-1.0), ValueError, "delta"),
    ("adamp", dict(wd_ratio=-0.1), ValueError, "wd_ratio"),
    ("adamp", dict(nesterov=1), TypeError, "nesterov"),
    ("sgdp", dict(lr=0.1, momentum=1.0), ValueError, "momentum"),
    ("sgdp", dict(lr=0.1, weight_decay=-1.0), ValueError, "weight_decay"),
    ("sgdp", dict(), TypeError, "lr"),
    ("adabelief", dict(rectify="yes"), TypeError, "rectify"),
    ("adabelief", dict(betas=(0.9,)), ValueError, "betas"),
    ("adamw_legacy", dict(clipping_threshold=0.0), ValueError, "clipping_threshold"),
    ("adamw_legacy", dict(caution=None), TypeError, "caution"),
    ("adamw_legacy", dict(corrected_weight_decay=True, max_lr_snapshot=-1.0), ValueError, "max_lr_snapshot"),
    ("nadam_legacy", dict(schedule_decay=-1.0), ValueError, "schedule_decay"),
    ("radam_legacy", dict(eps=-1.0), ValueError, "eps"),
    ("rmsprop_tf", dict(lr_in_momentum=0), TypeError, "lr_in_momentum"),
]


@pytest.mark.parametrize("fn,kwargs,error,arg", BAD_FUNCTIONAL, ids=[f"{b[0]}-{b[3]}" for b in BAD_FUNCTIONAL])
def test_bad_functional_arguments_name_the_argument(fn, kwargs, error, arg):
    with pytest.raises(error, match=arg.replace("[", r"\[")):
        getattr(fo.timm, fn)(**kwargs)


def test_other_class_errors():
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="required optimization parameter lr"):
        optim.SGDP(p)
    with pytest.raises(ValueError, match="capturable"):
        optim.AdamWLegacy(p, capturable=True)
    with pytest.raises(ValueError, match="delta"):
        optim.AdamP(p, delta=-1.0)
    with pytest.raises(ValueError, match="min_scale"):
        fo.cautious(fo.identity(), min_scale=0.0)
    with pytest.raises(TypeError, match="inner"):
        fo.cautious(None)
