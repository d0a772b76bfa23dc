"""zero_nans, keep_params_nonnegative, centralize, scale_by_trust_ratio, clip_by_block_rms and
adaptive_grad_clip: optax's values (tests/reference/transforms.json, made by
tests/reference/generate_transforms.py), torch-layout AGC against timm's rule written out,
dtypes, None leaves, purity/donation, torch.func, torch.compile and bad input."""

from __future__ import annotations

import importlib
import json
import math
import os

import optree
import pytest
import torch

import functional_optim as fo
from functional_optim.transforms.centering import centralize
from functional_optim.transforms.clipping import adaptive_grad_clip, clip_by_block_rms
from functional_optim.transforms.noise import add_noise
from functional_optim.transforms.norm_scaling import scale_by_trust_ratio
from functional_optim.transforms.numerics import ZeroNansState, keep_params_nonnegative, zero_nans
from compile_counting import CountingBackend

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "reference", "transforms.json")) as f:
    REF = json.load(f)

TOL = dict(rtol=1e-12, atol=1e-12, equal_nan=True)


def _dec(obj):
    if isinstance(obj, bool):
        return torch.tensor(obj)
    dtype = {"float64": torch.float64, "complex128": torch.complex128}[obj["dtype"]]
    re = torch.tensor(obj["re"], dtype=torch.float64)
    x = torch.complex(re, torch.tensor(obj["im"], dtype=torch.float64)) if "im" in obj else re
    return x.to(dtype).reshape(obj["shape"])


def _dec_tree(tree):
    return {key: _dec(v) for key, v in tree.items()}


def _make(case):
    module = importlib.import_module(f"functional_optim.transforms.{case['module']}")
    kwargs = {key: tuple(v) if isinstance(v, list) else v for key, v in case["kwargs"].items()}
    return getattr(module, case["fn"])(**kwargs)


def _clone(tree):
    return optree.tree_map(lambda x: None if x is None else x.clone(), tree, none_is_leaf=True)


def _same(a, b):
    """Bitwise equality, NaN included."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a, b = (torch.view_as_real(x) if x.is_complex() else x for x in (a, b))
    nan = torch.isnan(a)
    return torch.equal(nan, torch.isnan(b)) and torch.equal(a.masked_fill(nan, 0), b.masked_fill(nan, 0))


def _ids(cases):
    return [f"{c['fn']}-{i}-" + "-".join(f"{k}={v}" for k, v in c["kwargs"].items()) for i, c in enumerate(cases)]


# ---------------------------------------------------------------------------------
# optax's values


@pytest.mark.parametrize("donate", [False, True])
@pytest.mark.parametrize("case", REF["cases"], ids=_ids(REF["cases"]))
def test_matches_optax(case, donate):
    tx = _make(case)
    params = _dec_tree(case["params"])
    params_copy = _clone(params)
    state = tx.init(params)
    for step in case["steps"]:
        updates = _dec_tree(step["updates"])
        given = _clone(updates)
        out, state = tx.update(updates, state, params, donate=donate)
        expected = _dec_tree(step["expected"])
        assert set(out) == set(expected)
        for key in expected:
            assert out[key].dtype == expected[key].dtype and out[key].shape == expected[key].shape, key
            torch.testing.assert_close(out[key], expected[key], **TOL, msg=lambda m: f"{key}: {m}")
            if donate:
                assert out[key].data_ptr() == updates[key].data_ptr(), key  # written into the donated buffer
            else:
                assert _same(updates[key], given[key]), key  # pure: the input is untouched
        if "found_nan" in step:
            assert {key: bool(v) for key, v in state.found_nan.items()} == step["found_nan"]
    for key in params:
        assert _same(params[key], params_copy[key]), key  # params are never written


def test_reference_covers_every_transform_and_layout():
    fns = {c["fn"] for c in REF["cases"]}
    assert fns == {"zero_nans", "centralize", "keep_params_nonnegative", "scale_by_trust_ratio",
                   "clip_by_block_rms", "adaptive_grad_clip"}
    agc = [c for c in REF["cases"] if c["fn"] == "adaptive_grad_clip" and "axis" not in c["kwargs"]]
    shapes = {tuple(v["shape"]) for v in agc[0]["params"].values()}
    assert {(), (5,), (4, 3), (2, 3, 2, 2), (3, 2, 4), (2, 2, 2, 3, 2), (5, 1), (1, 5)} <= shapes
    # the reference cases actually clip some units and keep others
    for case in agc:
        step = case["steps"][0]
        u, e = _dec_tree(step["updates"]), _dec_tree(step["expected"])
        assert not torch.equal(u["conv2d"], e["conv2d"]) and not torch.equal(u["m"][0], e["m"][0])
        assert torch.equal(u["m"][1], e["m"][1])


# ---------------------------------------------------------------------------------
# adaptive_grad_clip in torch's layout: timm's adaptive_clip_grad rule, written out


def _timm_agc(p, g, clipping, eps):
    def unitwise(x):
        if x.ndim <= 1:
            return x.norm(2)
        return x.norm(2, dim=tuple(range(1, x.ndim)), keepdim=True)

    max_norm = unitwise(p).clamp(min=eps) * clipping
    g_norm = unitwise(g)
    return torch.where(g_norm < max_norm, g, g * (max_norm / g_norm.clamp(min=1e-6)))


def test_adaptive_grad_clip_matches_timm_rule_on_torch_modules():
    gen = torch.Generator().manual_seed(1)
    modules = torch.nn.ModuleDict({"lin": torch.nn.Linear(6, 4), "conv1": torch.nn.Conv1d(3, 5, 3),
                                   "conv2": torch.nn.Conv2d(3, 4, 3), "conv3": torch.nn.Conv3d(2, 3, 2)}).double()
    params = {name: p.detach() for name, p in modules.named_parameters()}
    grads = {name: torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.05 for name, p in params.items()}
    tx = adaptive_grad_clip(0.02)
    out, _ = tx.update(grads, tx.init(params), params)
    clipped = 0
    for name in params:
        expected = _timm_agc(params[name], grads[name], 0.02, 1e-3)
        torch.testing.assert_close(out[name], expected, rtol=1e-13, atol=0)
        clipped += int(not torch.equal(out[name], grads[name]))
    assert clipped >= 4


def test_adaptive_grad_clip_units_are_output_rows_not_columns():
    # a (out=2, in=3) weight: row 0 is clipped to 0.1 * ||p_row0||, row 1 kept
    p = torch.tensor([[1.0, 2.0, 2.0], [10.0, 0.0, 0.0]], dtype=torch.float64)
    g = torch.tensor([[3.0, 0.0, 4.0], [0.5, 0.0, 0.0]], dtype=torch.float64)
    out, _ = adaptive_grad_clip(0.1).update(g, fo.EmptyState(), p)
    torch.testing.assert_close(out[0], g[0] * (0.3 / 5.0), rtol=1e-15, atol=0)
    assert torch.equal(out[1], g[1])


# ---------------------------------------------------------------------------------
# Independent rules: dtypes, None leaves


def _rules():
    """transform -> (factory, the rule written out for one leaf: (u, p) -> new u)."""
    def nonneg(u, p):
        return torch.where(p + u < 0, -p, u)

    def central(u, p):
        return u - u.mean(dim=tuple(range(1, u.ndim)), keepdim=True) if u.ndim > 1 else u

    def trust(u, p):
        pn, un = p.double().norm(), u.double().norm()
        r = 1.0 if pn == 0 or un == 0 else float(0.5 * pn / (un + 1e-3))
        return u * r

    def block(u, p):
        rms = math.sqrt(float((u.double() ** 2).mean()))
        return u / max(1.0, rms / 0.3)

    def agc(u, p):
        return _timm_agc(p.double(), u.double(), 0.05, 1e-3).to(u.dtype)

    def nans(u, p):
        return torch.where(torch.isnan(u), torch.zeros_like(u), u)

    return {
        "zero_nans": (zero_nans, nans),
        "keep_params_nonnegative": (keep_params_nonnegative, nonneg),
        "centralize": (centralize, central),
        "scale_by_trust_ratio": (lambda: scale_by_trust_ratio(trust_coefficient=0.5, eps=1e-3), trust),
        "clip_by_block_rms": (lambda: clip_by_block_rms(0.3), block),
        "adaptive_grad_clip": (lambda: adaptive_grad_clip(0.05), agc),
    }


RULES = _rules()


def _tree(dtype, seed=0, nan=False):
    gen = torch.Generator().manual_seed(seed)
    tree = {"s": torch.randn((), generator=gen), "v": torch.randn(5, generator=gen),
            "m": torch.randn(4, 3, generator=gen), "c": torch.randn(2, 3, 2, 2, generator=gen)}
    if nan:
        tree["v"][2] = float("nan")
    return {key: v.to(dtype) for key, v in tree.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("name", list(RULES))
def test_dtypes_are_kept_and_values_follow_the_rule(name, dtype):
    make, rule = RULES[name]
    params = {key: v.abs() if name == "keep_params_nonnegative" else v for key, v in _tree(dtype, 1).items()}
    updates = _tree(dtype, 2, nan=name == "zero_nans")
    tx = make()
    out, _ = tx.update(updates, tx.init(params), params)
    tol = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float64: 1e-13}[dtype]
    for key in params:
        assert out[key].dtype == dtype and out[key].shape == params[key].shape, key
        expected = rule(updates[key], params[key]).to(dtype)
        torch.testing.assert_close(out[key], expected, rtol=tol, atol=tol, msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize("name", list(RULES) + ["add_noise"])
def test_none_updates_stay_none_and_other_leaves_are_unaffected(name):
    make = (lambda: add_noise(0.1, 0.55, 3)) if name == "add_noise" else RULES[name][0]
    params = {key: v.abs() for key, v in _tree(torch.float64, 1).items()}
    full = _tree(torch.float64, 2)
    partial = dict(full, m=None)
    tx = make()
    out_full, state_full = tx.update(full, tx.init(params), params)
    out_part, state_part = tx.update(partial, tx.init(params), params)
    assert out_part["m"] is None
    for key in ("s", "v", "c"):
        assert torch.equal(out_part[key], out_full[key]), key
    if name == "zero_nans":  # the flag of the leaf without update is the initial one
        assert not bool(state_part.found_nan["m"]) and not bool(state_full.found_nan["m"])


def test_zero_nans_keeps_the_flag_of_a_leaf_without_update():
    tx = zero_nans()
    params = {"a": torch.zeros(2), "b": torch.zeros(2)}
    _, state = tx.update({"a": torch.tensor([float("nan"), 1.0]), "b": torch.ones(2)}, tx.init(params))
    _, state = tx.update({"a": None, "b": torch.ones(2)}, state)
    assert bool(state.found_nan["a"]) and not bool(state.found_nan["b"])
    assert isinstance(state, ZeroNansState)


def test_complex_updates_keep_dtype_and_follow_the_rule():
    gen = torch.Generator().manual_seed(4)
    p = torch.randn(4, 3, generator=gen, dtype=torch.complex64)
    u = torch.randn(4, 3, generator=gen, dtype=torch.complex64) * 3
    u0 = torch.randn((), generator=gen, dtype=torch.complex64)
    for tx in (zero_nans(), centralize(), scale_by_trust_ratio(), clip_by_block_rms(0.5), adaptive_grad_clip(0.05)):
        out, _ = tx.update({"m": u, "s": u0}, tx.init({"m": p, "s": u0}), {"m": p, "s": u0})
        assert out["m"].dtype == torch.complex64 and out["s"].dtype == torch.complex64 and out["s"].dim() == 0
    out, _ = clip_by_block_rms(0.5).update(u, fo.EmptyState())
    rms = float(u.abs().square().mean().sqrt())
    torch.testing.assert_close(out, u / (rms / 0.5), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------
# torch.func and torch.compile


def _batched(n, seed):
    gen = torch.Generator().manual_seed(seed)
    return {"v": torch.randn(n, 5, generator=gen, dtype=torch.float64),
            "m": torch.randn(n, 4, 3, generator=gen, dtype=torch.float64)}


@pytest.mark.parametrize("name", list(RULES) + ["add_noise"])
def test_vmap_equals_loop_and_grad_matches_finite_differences(name):
    make = (lambda: add_noise(0.1, 0.55, 3)) if name == "add_noise" else RULES[name][0]
    tx = make()
    ps, us = _batched(3, 5), _batched(3, 6)
    ps = {key: v.abs() + 0.1 for key, v in ps.items()}
    state = tx.init({key: v[0] for key, v in ps.items()})

    def step(u, p):
        return tx.update(u, state, p)[0]

    batched = torch.func.vmap(step)(us, ps)
    for i in range(3):
        looped = step({key: v[i] for key, v in us.items()}, {key: v[i] for key, v in ps.items()})
        for key in looped:
            torch.testing.assert_close(batched[key][i], looped[key], rtol=1e-14, atol=1e-15)

    # grad of a weighted sum of the transformed updates with respect to the updates
    weights = _batched(1, 7)
    u1 = {key: v[0] for key, v in us.items()}
    p1 = {key: v[0] for key, v in ps.items()}

    def loss(u):
        out = step(u, p1)
        return sum((out[key] * weights[key][0]).sum() for key in out)

    grads = torch.func.grad(loss)(u1)
    h = 1e-6
    for key in u1:
        flat = u1[key].reshape(-1)
        for j in range(0, flat.numel(), 3):
            plus = {**u1, key: (flat + h * (torch.arange(flat.numel()) == j)).reshape(u1[key].shape)}
            minus = {**u1, key: (flat - h * (torch.arange(flat.numel()) == j)).reshape(u1[key].shape)}
            fd = (loss(plus) - loss(minus)) / (2 * h)
            assert abs(float(grads[key].reshape(-1)[j]) - float(fd)) <= 1e-6 * max(1.0, abs(float(fd))), (key, j)


HYPER = {  # a transform built from one tensor hyperparameter, and a value of it
    "adaptive_grad_clip/clipping": (lambda h: adaptive_grad_clip(h), 0.05),
    "scale_by_trust_ratio/trust_coefficient": (lambda h: scale_by_trust_ratio(trust_coefficient=h, eps=1e-3), 0.5),
    "scale_by_trust_ratio/min_norm": (lambda h: scale_by_trust_ratio(min_norm=h), 4.0),
    "clip_by_block_rms/threshold": (lambda h: clip_by_block_rms(h), 0.3),
    "add_noise/eta": (lambda h: add_noise(h, 0.55, 2), 0.1),
}


@pytest.mark.parametrize("name", list(HYPER))
def test_tensor_hyperparameters_are_differentiable_and_batchable(name):
    make, value = HYPER[name]
    ps, us = _batched(1, 8), _batched(1, 9)
    p1 = {key: v[0] for key, v in ps.items()}
    u1 = {key: v[0] * 3 for key, v in us.items()}
    weights = {key: v[0] for key, v in _batched(1, 10).items()}
    state = make(torch.tensor(value)).init(p1)

    def loss(h):
        out = make(h).update(u1, state, p1)[0]
        return sum((out[key] * weights[key]).sum() for key in out)

    h = torch.tensor(value, dtype=torch.float64)
    grad = torch.func.grad(loss)(h)
    eps = 1e-6 * value
    fd = (loss(h + eps) - loss(h - eps)) / (2 * eps)
    assert float(fd) != 0.0
    assert abs(float(grad) - float(fd)) <= 1e-6 * abs(float(fd))
    values = torch.tensor([0.5 * value, value, 2 * value], dtype=torch.float64)
    batched = torch.func.vmap(loss)(values)
    for i in range(3):
        torch.testing.assert_close(batched[i], loss(values[i]), rtol=1e-14, atol=1e-14)


def test_compiled_chain_is_one_graph_and_equals_eager():
    torch._dynamo.reset()
    tx = fo.chain(zero_nans(), centralize(), adaptive_grad_clip(0.05), clip_by_block_rms(1.0),
                  scale_by_trust_ratio(trust_coefficient=0.5), add_noise(0.01, 0.55, 7), fo.scale(-0.1),
                  keep_params_nonnegative())
    gen = torch.Generator().manual_seed(0)
    params = {"w": torch.rand(4, 3, generator=gen, dtype=torch.float64),
              "b": torch.rand(3, generator=gen, dtype=torch.float64)}
    counter = CountingBackend()
    compiled = torch.compile(tx.update, fullgraph=True, backend=counter)
    # AOTAutograd + functionalization (the in-place integer hash included); inductor's
    # C++ build of the hash kernel takes 30-100 s on a cold cache, so it is not run here
    traced = torch.compile(tx.update, fullgraph=True, backend="aot_eager")
    state_e = state_c = state_i = tx.init(params)
    for step in range(3):
        grads = {key: torch.randn(v.shape, generator=gen, dtype=torch.float64) for key, v in params.items()}
        grads["w"][1, 1] = float("nan")
        u_e, state_e = tx.update(grads, state_e, params)
        u_c, state_c = compiled(grads, state_c, params)
        u_i, state_i = traced(grads, state_i, params)
        for key in params:
            torch.testing.assert_close(u_c[key], u_e[key], rtol=1e-14, atol=1e-15)
            torch.testing.assert_close(u_i[key], u_e[key], rtol=1e-14, atol=1e-15)  # noise included
            assert (params[key] + u_e[key] >= 0).all()
    assert counter.graphs == 1
    assert bool(state_e[0].found_nan["w"]) and int(state_e[5].count) == 3


# ---------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("make, error, match", [
    (lambda: adaptive_grad_clip(-0.1), ValueError, "clipping"),
    (lambda: adaptive_grad_clip(0.1, eps=-1.0), ValueError, "eps"),
    (lambda: adaptive_grad_clip("0.1"), TypeError, "clipping"),
    (lambda: adaptive_grad_clip(0.1, axis="rows"), TypeError, "axis"),
    (lambda: adaptive_grad_clip(0.1, axis=(0, 1.0)), TypeError, "axis"),
    (lambda: adaptive_grad_clip(0.1, axis=()), ValueError, "axis"),
    (lambda: clip_by_block_rms(0.0), ValueError, "threshold"),
    (lambda: clip_by_block_rms(-1.0), ValueError, "threshold"),
    (lambda: clip_by_block_rms(None), TypeError, "threshold"),
    (lambda: scale_by_trust_ratio(min_norm=-1.0), ValueError, "min_norm"),
    (lambda: scale_by_trust_ratio(trust_coefficient=-1.0), ValueError, "trust_coefficient"),
    (lambda: scale_by_trust_ratio(eps=float("nan")), ValueError, "eps"),
    (lambda: add_noise(-0.1, 0.55), ValueError, "eta"),
    (lambda: add_noise(0.1, "0.55"), TypeError, "gamma"),
])
def test_bad_hyperparameters_name_the_argument(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_updates_and_params_name_the_problem():
    p = {"w": torch.ones(2, 2)}
    for tx in (adaptive_grad_clip(0.1), scale_by_trust_ratio(), keep_params_nonnegative()):
        with pytest.raises(ValueError, match="needs params"):
            tx.update(p, tx.init(p))
    tx = adaptive_grad_clip(0.1, axis=2)
    with pytest.raises(ValueError, match="axis"):
        tx.update(p, tx.init(p), p)
    six = torch.ones(2, 2, 2, 2, 2, 2)
    with pytest.raises(ValueError, match="axis"):
        adaptive_grad_clip(0.1).update(six, fo.EmptyState(), six)
    # with axis, any rank works
    out, _ = adaptive_grad_clip(0.1, axis=(1, 2, 3, 4, 5)).update(six, fo.EmptyState(), six)
    assert out.shape == six.shape
    z = torch.ones(2, dtype=torch.complex64)
    with pytest.raises(TypeError, match="real params"):
        keep_params_nonnegative().update(z, fo.EmptyState(), z)
    tx = zero_nans()
    with pytest.raises(ValueError, match="found_nan"):
        tx.update({"w": torch.ones(2), "b": torch.ones(1)}, tx.init(p))
