"""``fo.timm.madgrad`` / ``adafactor`` / ``adahessian`` and ``adapters.timm.MADGRAD`` /
``Adafactor`` / ``Adahessian`` against timm 1.0.31's own trajectories.

The reference (``tests/reference/timm_misc.pt``) was recorded from the real ``timm.optim``
by ``tests/reference/generate_timm_misc.py`` (timm is never imported here): float64 params
(a 1-D bias, a 2-D matrix, a 4-D conv weight; a 17x18 matrix for Adafactor's default
factoring size) after every step, timm's state_dicts, its signatures and registry entries.
Tolerance: 1e-12 relative in float64 (both sides compute in float64; the differences are
a few roundings: ``p + (p_new - p)`` for MADGRAD, an RMS as ``norm * n**-0.5``).
"""

from __future__ import annotations

import inspect
import math
import pathlib

import pytest
import torch

import functional_optim as fo
from adapters import FunctionalOptimizer
from adapters import timm as optim

REF = torch.load(pathlib.Path(__file__).parent / "reference" / "timm_misc.pt", weights_only=True)
TOL = 1e-12
STEPS, MID = REF["steps"], REF["mid"]
AH_SHAPES = {"conv": (3, 2, 3, 3), "bias": (3,), "w": (3, 4)}


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


def _init(which: str) -> list[torch.Tensor]:
    shapes = _shapes(which)
    return [REF["init"][which][n].clone() for n in shapes]


def _grads(which: str, t: int) -> list[torch.Tensor]:
    return _unflat(REF["grads"][which][t], _shapes(which))


def _assert_state_dict_equal(ours: dict, ref: dict, rtol: float = TOL) -> None:
    """Same param-group keys and values, same per-param keys (in order), step ints equal,
    tensors of the same dtype and shape equal to ``rtol``."""
    assert len(ours["param_groups"]) == len(ref["param_groups"])
    for a, b in zip(ours["param_groups"], ref["param_groups"]):
        assert set(a) == set(b), (sorted(a), sorted(b))
        for key in b:
            va, vb = a[key], b[key]
            if isinstance(vb, torch.Tensor) or isinstance(va, torch.Tensor):
                assert isinstance(va, torch.Tensor) == isinstance(vb, torch.Tensor), key
                assert math.isclose(float(va), float(vb), rel_tol=rtol), (key, va, vb)
            else:
                assert va == vb, (key, va, vb)
    assert sorted(ours["state"]) == sorted(int(i) for i in ref["state"])
    for i, b in ref["state"].items():
        a = ours["state"][int(i)]
        assert list(a) == list(b), (list(a), list(b))
        for key, vb in b.items():
            va = a[key]
            if isinstance(vb, torch.Tensor):
                assert isinstance(va, torch.Tensor) and va.dtype == vb.dtype and va.shape == vb.shape, key
                scale = vb.abs().max().clamp_min(1e-300)
                assert ((va - vb).abs().max() / scale).item() <= rtol, key
            else:
                assert type(va) is type(vb) and va == vb, (key, va, vb)


def _functional(factory, kwargs, which: str) -> list[torch.Tensor]:
    tx = factory(**kwargs)
    ps = _init(which)
    state = tx.init(ps)
    traj = []
    for t in range(STEPS):
        u, state = tx.update(_grads(which, t), state, ps)
        ps = fo.apply_updates(ps, u)
        traj.append(_flat(ps))
    return traj


def _class(cls, kwargs, which: str, start: int = 0, load: dict | None = None, **opt_kwargs):
    values = _init(which) if start == 0 else _unflat(_ref_row(load["traj"], start - 1), _shapes(which))
    params = [torch.nn.Parameter(v) for v in values]
    opt = cls(params, **kwargs, **opt_kwargs)
    if load is not None:
        opt.load_state_dict(load["state_dict"])
    traj = []
    for t in range(start, STEPS):
        for p, g in zip(params, _grads(which, t)):
            p.grad = g
        opt.step()
        traj.append(_flat(params))
    return opt, traj


def _ref_row(traj, t):
    return traj[t]


def _max_rel(ours: list[torch.Tensor], ref: torch.Tensor, start: int = 0) -> float:
    return max(_rel(a, ref[start + t]) for t, a in enumerate(ours))


def _moved(ref: torch.Tensor, which: str) -> bool:
    return not torch.allclose(ref[-1], _flat(_init(which)))


# -- MADGRAD ------------------------------------------------------------------------------

MADGRAD = REF["madgrad"]


@pytest.mark.parametrize("case", range(len(MADGRAD)), ids=[str(c["kwargs"]) for c in MADGRAD])
def test_madgrad_matches_timm(case):
    c = MADGRAD[case]
    assert _moved(c["traj"], "small")
    assert _max_rel(_functional(fo.timm.madgrad, c["kwargs"], "small"), c["traj"]) <= TOL
    opt, traj = _class(optim.MADGRAD, c["kwargs"], "small")
    assert _max_rel(traj, c["traj"]) <= TOL
    _assert_state_dict_equal(opt.state_dict(), c["final"])


# -- Adafactor ----------------------------------------------------------------------------

ADAFACTOR = REF["adafactor"]


@pytest.mark.parametrize("case", range(len(ADAFACTOR)), ids=[f"{c['shapes']}-{c['kwargs']}" for c in ADAFACTOR])
def test_adafactor_matches_timm(case):
    c = ADAFACTOR[case]
    which = c["shapes"]
    assert _moved(c["traj"], which)
    assert _max_rel(_functional(fo.timm.adafactor, c["kwargs"], which), c["traj"]) <= TOL
    opt, traj = _class(optim.Adafactor, c["kwargs"], which)
    assert _max_rel(traj, c["traj"]) <= TOL
    _assert_state_dict_equal(opt.state_dict(), c["final"])


def test_adafactor_cases_cover_the_branches():
    """The recorded cases factor a 2-D and a 4-D param (with timm's dims: the conv's
    channel dims 0, 1), keep the 1-D bias unfactored, and cover the default size."""
    kinds = set()
    for c in ADAFACTOR:
        for i, entry in c["final"]["state"].items():
            shape = list(_shapes(c["shapes"]).values())[int(i)]
            if "exp_avg_sq_row" in entry:
                kinds.add(("factored", len(shape), c["kwargs"].get("min_dim_size_to_factor", 16)))
                if len(shape) == 4:  # row drops dim 1, col drops dim 0
                    assert entry["exp_avg_sq_row"].shape == (shape[0],) + tuple(shape[2:])
                    assert entry["exp_avg_sq_col"].shape == tuple(shape[1:])
            else:
                kinds.add(("full", len(shape)))
    assert {("factored", 2, 1), ("factored", 4, 1), ("factored", 2, 16), ("factored", 4, 16), ("full", 1),
            ("full", 2), ("full", 4)} <= kinds


@pytest.mark.parametrize("case", [i for i, c in enumerate(MADGRAD) if c["mid"] is not None])
def test_madgrad_timm_checkpoint_continues(case):
    c = MADGRAD[case]
    _, traj = _class(optim.MADGRAD, c["kwargs"], "small", start=MID, load={"traj": c["traj"], "state_dict": c["mid"]})
    assert _max_rel(traj, c["traj"], MID) <= TOL


@pytest.mark.parametrize("case", [i for i, c in enumerate(ADAFACTOR) if c["mid"] is not None])
def test_adafactor_timm_checkpoint_continues(case):
    c = ADAFACTOR[case]
    opt, traj = _class(optim.Adafactor, c["kwargs"], c["shapes"], start=MID,
                       load={"traj": c["traj"], "state_dict": c["mid"]})
    assert _max_rel(traj, c["traj"], MID) <= TOL
    _assert_state_dict_equal(opt.state_dict(), c["final"])


# -- Adahessian ---------------------------------------------------------------------------

ADAHESSIAN = REF["adahessian"]


def _ah_loss(p, x):
    conv, bias, w = p
    h = torch.tanh(torch.nn.functional.conv2d(x, conv, bias)).mean(dim=(2, 3))
    out = h @ w
    return (out ** 2).mean() + torch.cos(out).sum() * 0.3 + (h ** 4).sum() * 0.1


def _ah_class(kwargs, start=0, load=None):
    values = [REF["ah_init"][n].clone() for n in AH_SHAPES] if start == 0 else _unflat(load["traj"][start - 1],
                                                                                        AH_SHAPES)
    params = [torch.nn.Parameter(v) for v in values]
    opt = optim.Adahessian(params, **kwargs)
    if load is not None:
        opt.load_state_dict(load["state_dict"])
    traj = []
    for t in range(start, STEPS):
        opt.zero_grad()
        _ah_loss(params, REF["ah_x"][t]).backward(create_graph=True)
        opt.step()
        traj.append(_flat(params))
    for p in params:
        p.grad = None
    return opt, traj


def _ah_functional(kwargs):
    """fo.timm.adahessian with the Hutchinson estimate made here as timm makes it (its
    seeded generator, Rademacher vectors in the default dtype, the estimate refreshed
    every update_each steps)."""
    update_each, n = kwargs.get("update_each", 1), kwargs.get("n_samples", 1)
    tx = fo.timm.adahessian(**kwargs)
    ps = [REF["ah_init"][name].clone() for name in AH_SHAPES]
    state = tx.init(ps)
    gen = torch.Generator().manual_seed(2147483647)
    traj = []
    for t in range(STEPS):
        leaves = [p.clone().requires_grad_(True) for p in ps]
        grads = torch.autograd.grad(_ah_loss(leaves, REF["ah_x"][t]), leaves, create_graph=True)
        hess = [torch.zeros_like(p) for p in ps]
        if t % update_each == 0:
            for i in range(n):
                zs = [torch.randint(0, 2, p.size(), generator=gen) * 2.0 - 1.0 for p in ps]
                hzs = torch.autograd.grad(grads, leaves, grad_outputs=zs, retain_graph=i < n - 1)
                hess = [h + hz * z / n for h, hz, z in zip(hess, hzs, zs)]
        u, state = tx.update([g.detach() for g in grads], state, ps, hessian=hess)
        ps = fo.apply_updates(ps, u)
        traj.append(_flat(ps))
    return traj


@pytest.mark.parametrize("case", range(len(ADAHESSIAN)), ids=[str(c["kwargs"]) for c in ADAHESSIAN])
def test_adahessian_matches_timm(case):
    c = ADAHESSIAN[case]
    first = _flat([REF["ah_init"][n] for n in AH_SHAPES])
    assert not torch.allclose(c["traj"][-1], first)
    opt, traj = _ah_class(c["kwargs"])
    assert _max_rel(traj, c["traj"]) <= TOL
    _assert_state_dict_equal(opt.state_dict(), c["final"])
    assert _max_rel(_ah_functional(c["kwargs"]), c["traj"]) <= TOL


def test_adahessian_hessian_is_nonzero_and_used():
    """The estimate really enters: a wrong estimate (zeros) changes the trajectory, and
    the second moment of the reference is far from zero."""
    c = ADAHESSIAN[0]
    assert all(e["exp_hessian_diag_sq"].abs().max() > 1e-6 for e in c["final"]["state"].values())
    tx = fo.timm.adahessian()
    ps = [REF["ah_init"][n].clone() for n in AH_SHAPES]
    g = torch.func.grad(lambda p: _ah_loss(p, REF["ah_x"][0]))(ps)
    u0, _ = tx.update(g, tx.init(ps), ps, hessian=[torch.zeros_like(p) for p in ps])
    u1, _ = tx.update(g, tx.init(ps), ps, hessian=[torch.ones_like(p) for p in ps])
    assert not torch.allclose(_flat(u0), _flat(u1))
    with pytest.raises(ValueError, match="hessian"):
        tx.update(g, tx.init(ps), ps)


def test_adahessian_state_dict_before_step_and_checkpoint_loads():
    params = [torch.nn.Parameter(REF["ah_init"][n].clone()) for n in AH_SHAPES]
    opt = optim.Adahessian(params)
    assert opt.state_dict()["state"] == {0: {"hessian step": 0}, 1: {"hessian step": 0}, 2: {"hessian step": 0}}
    for c in ADAHESSIAN:
        if c["mid"] is None:
            continue
        opt, _ = _ah_class(c["kwargs"], start=STEPS, load={"traj": c["traj"], "state_dict": c["mid"]})
        _assert_state_dict_equal(opt.state_dict(), c["mid"])


# -- signatures, registry, errors -------------------------------------------------------

@pytest.mark.parametrize("name", ["MADGRAD", "Adafactor", "Adahessian"])
def test_signature_equals_timm(name):
    assert str(inspect.signature(getattr(optim, name))) == REF["signatures"][name]
    assert name in optim.__all__


def test_functional_signatures():
    sig = {n: [(p.name, p.default) for p in inspect.signature(getattr(fo.timm, n)).parameters.values()]
           for n in ("madgrad", "adafactor", "adahessian")}
    assert sig["madgrad"] == [("lr", 1e-2), ("momentum", 0.9), ("weight_decay", 0), ("eps", 1e-6),
                              ("decoupled_decay", False)]
    assert [n for n, _ in sig["adafactor"]] == ["lr", "eps", "eps_scale", "clip_threshold", "decay_rate", "betas",
                                                 "weight_decay", "scale_parameter", "warmup_init",
                                                 "min_dim_size_to_factor", "caution"]
    assert sig["adahessian"][-4:] == [("hessian_power", 1.0), ("update_each", 1), ("n_samples", 1),
                                      ("avg_conv_kernel", False)]
    assert fo.madgrad is fo.timm.madgrad and fo.adahessian is fo.timm.adahessian


@pytest.mark.parametrize("name", sorted(REF["registry"]))
def test_registry_binds_like_timm(name):
    info = REF["registry"][name]
    ours = optim.get_optimizer_info(name)
    assert optim.get_optimizer_class(name, bind_defaults=False) is getattr(optim, info["cls"])
    assert dict(ours.defaults or {}) == info["defaults"]
    assert (ours.has_betas, ours.has_momentum, ours.has_eps, ours.second_order) == (
        info["has_betas"], info["has_momentum"], info["has_eps"], info["second_order"])


BAD = [
    (optim.MADGRAD, dict(momentum=1.0), "Momentum 1.0 must be in the range [0,1]", "momentum"),
    (optim.MADGRAD, dict(lr=0.0), "Learning rate 0.0 must be positive", "lr"),
    (optim.MADGRAD, dict(weight_decay=-1.0), "Weight decay -1.0 must be non-negative", "weight_decay"),
    (optim.MADGRAD, dict(eps=-1.0), "Eps must be non-negative", "eps"),
    (optim.Adafactor, dict(lr=0.1, warmup_init=True), "warmup_init requires relative_step=True", "warmup_init"),
    (optim.Adafactor, dict(clip_threshold=0.0), "Invalid clip_threshold value: 0.0", "clip_threshold"),
    (optim.Adafactor, dict(betas=(1.0, 0.9)), "Invalid beta parameter at index 0: 1.0", "betas[0]"),
    (optim.Adafactor, dict(decay_rate=0.5), "Invalid decay_rate value: 0.5", "decay_rate"),
    (optim.Adahessian, dict(lr=-1.0), "Invalid learning rate: -1.0", "lr"),
    (optim.Adahessian, dict(eps=-1.0), "Invalid epsilon value: -1.0", "eps"),
    (optim.Adahessian, dict(betas=(0.9, 1.0)), "Invalid beta parameter at index 1: 1.0", "betas[1]"),
    (optim.Adahessian, dict(hessian_power=1.5), "Invalid Hessian power value: 1.5", "hessian_power"),
    (optim.Adahessian, dict(update_each=0), "update_each must be an int >= 1", "update_each"),
]


@pytest.mark.parametrize("cls,kwargs,message,name", BAD, ids=[f"{b[0].__name__}-{b[3]}" for b in BAD])
def test_bad_arguments_raise_naming_the_argument(cls, kwargs, message, name):
    with pytest.raises(ValueError) as err:
        cls([torch.nn.Parameter(torch.zeros(2))], **kwargs)
    assert str(err.value).startswith(message) and name.split("[")[0] in str(err.value)
    functional = {optim.MADGRAD: fo.timm.madgrad, optim.Adafactor: fo.timm.adafactor,
                  optim.Adahessian: fo.timm.adahessian}[cls]
    with pytest.raises(ValueError, match=name.split("[")[0]):
        functional(**kwargs)


def test_transform_argument_errors():
    with pytest.raises(ValueError, match="factor_dims"):
        fo.scale_by_factored_rms(factor_dims="rows")
    with pytest.raises(ValueError, match="min_dim_size_to_factor"):
        fo.scale_by_factored_rms(min_dim_size_to_factor=-1)
    with pytest.raises(ValueError, match="decay_rate"):
        fo.scale_by_factored_rms(decay_rate=0.3)
    with pytest.raises(ValueError, match="update_each"):
        fo.scale_by_adahessian(update_each=0)
    with pytest.raises(ValueError, match="learning_rate"):
        fo.scale_by_madgrad(learning_rate=0.0)
    with pytest.raises(ValueError, match="warmup_init"):
        fo.scale_by_relative_step_size(lr=0.1, warmup_init=True)
    with pytest.raises(TypeError, match="caution"):
        fo.timm.adafactor(caution=1)


# -- reusable pieces ---------------------------------------------------------------------

def test_factored_dims_are_options():
    """The dims factored are an option: timm's rule (conv channels) or the last two (torch's)."""
    g = torch.randn(3, 4, 2, 5, dtype=torch.float64)
    timm_state = fo.scale_by_factored_rms(min_dim_size_to_factor=1).init([g])
    last_state = fo.scale_by_factored_rms(min_dim_size_to_factor=1, factor_dims="last_two").init([g])
    assert timm_state.v_row[0].shape == (3, 2, 5) and timm_state.v_col[0].shape == (4, 2, 5)
    assert last_state.v_row[0].shape == (3, 4, 2) and last_state.v_col[0].shape == (3, 4, 5)
    custom = fo.scale_by_factored_rms(factor_dims=lambda shape, m: (1, 3) if len(shape) == 4 else None)
    u, st = custom.update([g], custom.init([g]))
    assert st.v_row[0].shape == (3, 4, 2) and st.v_col[0].shape == (3, 2, 5)
    # at t = 1 the factored estimate of g**2 is row * col / mean(row): exact for a rank-1 g**2
    a, b = torch.rand(3, 1, dtype=torch.float64) + 0.5, torch.rand(1, 6, dtype=torch.float64) + 0.5
    g2 = a * b
    tx = fo.scale_by_factored_rms(min_dim_size_to_factor=1, eps=0.0)
    u, _ = tx.update([g2], tx.init([g2]))
    torch.testing.assert_close(u[0], g2 / g2.abs(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("factory,kwargs", [
    (fo.timm.madgrad, dict(lr=0.05, weight_decay=0.1, decoupled_decay=True)),
    (fo.timm.adafactor, dict(min_dim_size_to_factor=1, betas=(0.9, 0.999), caution=True, weight_decay=0.1)),
], ids=["madgrad", "adafactor"])
def test_compiled_step_equals_eager(factory, kwargs):
    runs = []
    for compile_step in (False, True):
        params = [torch.nn.Parameter(v) for v in _init("small")]
        opt = FunctionalOptimizer(params, factory, compile=compile_step, **kwargs)
        traj = []
        for t in range(3):
            for p, g in zip(params, _grads("small", t)):
                p.grad = g
            opt.step()
            traj.append(_flat(params))
        runs.append(traj)
    assert max(_rel(a, b) for a, b in zip(runs[1], runs[0])) <= TOL
