"""Random-input robustness of the torch-named aliases (issue 12, item 5), and regression
tests for the bugs such inputs found.

A derandomized hypothesis suite (the same examples on every run, so CI is reproducible)
draws an optimizer among ``fo.sgd``, ``adam``, ``adamw``, ``adagrad``, ``adadelta``,
``adamax``, ``nadam``, ``radam``, ``rmsprop``, ``asgd``, ``rprop`` (and chains such as
``clip_by_global_norm + adamw``) with valid hyperparameters (Python numbers or 0-d
float64 tensors; edge values: lr 0, momentum 0, betas near 1, tiny eps, weight decay 0
and large, maximize), a small param tree (0-d, empty and 1-3 element leaves) in float32,
float64 or bfloat16, None gradients, and extreme magnitudes (gradients ~1e20 and ~1e-30,
infinite params). For 1-3 steps it asserts, against ``torch.optim``'s class of the same
name (``foreach=False``, the same hyperparameters as Python numbers) fed the same inputs:

* nothing raises;
* where torch's param is finite ours is finite, and where torch's is infinite ours is
  infinite too, never NaN (the same infinity, except that an additive update cannot turn
  ``inf`` into ``-inf`` as torch's ``p.mul_(1 - lr * wd)`` does when ``lr * wd > 1``);
* the params agree with torch's to a tolerance scaled to the dtype and to the size of
  the params and of their movement (``_RTOL``);
* dtypes and shapes are kept (params, updates, every state leaf);
* leaves whose gradient is None get a None update and keep their params bit for bit;
* ``update`` (without donation) modifies none of its inputs: grads, params, state.
"""

from __future__ import annotations

import re

import optree
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import functional_optim as fo

settings.register_profile(
    "properties", derandomize=True, deadline=None, database=None, print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_PROFILE = settings.get_profile("properties")

_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
# relative tolerance of params against torch's, per dtype: bfloat16 rounds each of
# torch's in-place ops (p.mul_, p.addcdiv_) to 8 bits where ours rounds once
_RTOL = {torch.float64: 1e-9, torch.float32: 2e-5, torch.bfloat16: 3e-2}
_SHAPES = ((), (0,), (1,), (3,), (2, 2))

# ----------------------------------------------------------------------------------
# Strategies


class _Tensors:
    """Turns hyperparameter values into 0-d float64 tensors by the bits of one drawn
    integer (one draw for all of them: hypothesis's cost grows with the number of draws)."""

    def __init__(self, bits: int):
        self.bits = bits

    def __call__(self, value: float):
        self.bits, tensor = self.bits >> 1, self.bits & 1
        return torch.tensor(float(value), dtype=torch.float64) if tensor else value


_LR = st.sampled_from([0.0, 1e-3, 0.1, 1.0])
_EPS = st.sampled_from([1e-30, 1e-8, 1e-3])
_WD = st.sampled_from([0.0, 1e-2, 10.0])
_B1 = st.sampled_from([0.0, 0.5, 0.9, 1 - 1e-6])
_B2 = st.sampled_from([0.0, 0.5, 0.999, 1 - 1e-6])
_MOMENTUM = st.sampled_from([0.0, 0.5, 0.9])


def _betas(draw, t):
    return (t(draw(_B1)), t(draw(_B2)))


@st.composite
def hyperparams(draw, name: str) -> dict:
    """Valid torch-named keyword arguments for ``fo.<name>`` (and torch.optim's class)."""
    t = _Tensors(draw(st.integers(0, 2 ** 12 - 1)))
    h: dict = {"lr": t(draw(_LR)), "maximize": draw(st.booleans())}
    if name == "sgd":
        momentum, dampening = draw(_MOMENTUM), draw(st.sampled_from([0.0, 0.5]))
        h.update(momentum=t(momentum), dampening=t(dampening), weight_decay=t(draw(_WD)),
                 nesterov=momentum > 0 and dampening == 0 and draw(st.booleans()))
    elif name in ("adam", "adamw"):
        h.update(betas=_betas(draw, t), eps=t(draw(_EPS)), weight_decay=t(draw(_WD)), amsgrad=draw(st.booleans()))
        if name == "adam":
            h["decoupled_weight_decay"] = draw(st.booleans())
    elif name == "adagrad":
        h.update(lr_decay=t(draw(st.sampled_from([0.0, 0.1]))), weight_decay=t(draw(_WD)),
                 initial_accumulator_value=t(draw(st.sampled_from([0.0, 0.1]))), eps=t(draw(_EPS)))
    elif name == "adadelta":
        h.update(rho=t(draw(st.sampled_from([0.0, 0.9, 1 - 1e-6]))), eps=t(draw(_EPS)), weight_decay=t(draw(_WD)))
    elif name == "adamax":
        h.update(betas=_betas(draw, t), eps=t(draw(_EPS)), weight_decay=t(draw(_WD)))
    elif name == "nadam":
        h.update(betas=_betas(draw, t), eps=t(draw(_EPS)), weight_decay=t(draw(_WD)),
                 momentum_decay=t(draw(st.sampled_from([0.0, 4e-3, 0.5]))),
                 decoupled_weight_decay=draw(st.booleans()))
    elif name == "radam":
        h.update(betas=_betas(draw, t), eps=t(draw(_EPS)), weight_decay=t(draw(_WD)),
                 decoupled_weight_decay=draw(st.booleans()))
    elif name == "rmsprop":
        # (centered with alpha 0: the variance g*g - g**2 is pure rounding noise, NaN or
        # +-noise / eps in torch itself, so there is nothing to agree on)
        centered = draw(st.booleans())
        alphas = [0.99, 1 - 1e-6] if centered else [0.0, 0.99, 1 - 1e-6]
        h.update(alpha=t(draw(st.sampled_from(alphas))), eps=t(draw(_EPS)),
                 weight_decay=t(draw(_WD)), momentum=t(draw(_MOMENTUM)), centered=centered)
    elif name == "asgd":
        h.update(lambd=t(draw(st.sampled_from([0.0, 1e-4, 0.5]))), alpha=t(draw(st.sampled_from([0.0, 0.75]))),
                 t0=t(draw(st.sampled_from([0.0, 1.0, 1e6]))), weight_decay=t(draw(_WD)))
    elif name == "rprop":
        h.update(etas=(t(draw(st.sampled_from([0.1, 0.5]))), t(draw(st.sampled_from([1.2, 2.0])))),
                 step_sizes=(t(draw(st.sampled_from([0.0, 1e-6]))), t(draw(st.sampled_from([1.0, 50.0])))))
    return h


ALIASES = ("sgd", "adam", "adamw", "adagrad", "adadelta", "adamax", "nadam", "radam", "rmsprop", "asgd",
           "rprop")
_TORCH = {name: getattr(torch.optim, cls) for name, cls in (
    ("sgd", "SGD"), ("adam", "Adam"), ("adamw", "AdamW"), ("adagrad", "Adagrad"), ("adadelta", "Adadelta"),
    ("adamax", "Adamax"), ("nadam", "NAdam"), ("radam", "RAdam"), ("rmsprop", "RMSprop"), ("asgd", "ASGD"),
    ("rprop", "Rprop"))}


@st.composite
def problems(draw) -> dict:
    """A param tree, 1-3 gradient trees (None leaves included) and their magnitudes."""
    dtype = draw(st.sampled_from(_DTYPES))
    n = draw(st.integers(1, 3))
    shapes = [draw(st.sampled_from(_SHAPES)) for _ in range(n)]
    steps = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2 ** 16))
    grad_scale = draw(st.sampled_from([1.0, 1.0, 1e20, 1e-30]))
    inf_param = draw(st.sampled_from([None, None, None, float("inf"), -float("inf")]))
    none_leaf = draw(st.sampled_from([None, *range(n)]))  # this leaf's gradient is always None
    gen = torch.Generator().manual_seed(seed)
    params = {f"p{i}": torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for i, s in enumerate(shapes)}
    if inf_param is not None:
        for p in params.values():
            if p.numel():
                p.view(-1)[0] = inf_param
                break
    grads = []
    for step in range(steps):
        tree = {}
        for i, (key, p) in enumerate(params.items()):
            if i == none_leaf or (i == 0 and step == 1 and draw(st.booleans())):
                tree[key] = None  # always None, or None on one step only
            else:
                tree[key] = (torch.randn(p.shape, generator=gen, dtype=torch.float64) * grad_scale).to(dtype)
        grads.append(tree)
    return dict(dtype=dtype, params=params, grads=grads)


# ----------------------------------------------------------------------------------
# Running both sides


def _number(value):
    return float(value) if isinstance(value, torch.Tensor) else value


def _as_numbers(h: dict) -> dict:
    return {k: tuple(_number(x) for x in v) if isinstance(v, tuple) else _number(v) for k, v in h.items()}


def _run_torch(name: str, h: dict, params: dict, grads: list) -> dict:
    tensors = {k: p.clone().requires_grad_(True) for k, p in params.items()}
    opt = _TORCH[name](list(tensors.values()), foreach=False, **_as_numbers(h))
    for tree in grads:
        for k, p in tensors.items():
            p.grad = None if tree[k] is None else tree[k].clone()
        opt.step()
    return {k: p.detach() for k, p in tensors.items()}


def _snapshot(tree):
    return optree.tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, tree, none_is_leaf=True)


def _same_bits(a, b) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(
        torch.equal(a, b) or torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0)))


def _assert_unchanged(before, after, what: str) -> None:
    for x, y in zip(optree.tree_leaves(before), optree.tree_leaves(after)):
        if isinstance(x, torch.Tensor):
            assert _same_bits(x, y), f"update modified its {what}"


def _run_functional(tx: fo.GradientTransformation, params: dict, grads: list) -> dict:
    """Steps ``tx`` over ``grads`` checking purity, None leaves and dtypes; returns params."""
    state = tx.init(params)
    shapes = [(x.shape, x.dtype) for x in optree.tree_leaves(state) if isinstance(x, torch.Tensor)]
    for tree in grads:
        kept = _snapshot((tree, params, state))
        updates, new_state = tx.update(tree, state, params)
        _assert_unchanged(kept, (tree, params, state), "inputs (grads, params or state)")
        for key, g in tree.items():
            u = updates[key]
            if g is None:
                assert u is None, f"leaf {key} has no gradient but got an update"
            else:
                assert u.dtype == params[key].dtype and u.shape == params[key].shape, (key, u.dtype, u.shape)
        now = [(x.shape, x.dtype) for x in optree.tree_leaves(new_state) if isinstance(x, torch.Tensor)]
        assert now == shapes, "the state changed its shapes or dtypes"
        new_params = fo.apply_updates(params, updates)
        for key, g in tree.items():
            assert new_params[key].dtype == params[key].dtype and new_params[key].shape == params[key].shape
            if g is None:
                assert _same_bits(new_params[key], params[key]), f"leaf {key} without gradient changed"
        params, state = new_params, new_state
    return params


def _flips_sign(name: str, h: dict) -> bool:
    # decoupled decay with lr * weight_decay > 1 multiplies the params by a negative factor
    # (torch's p.mul_(1 - lr * wd)): an infinite param's inf * keep - inf is then -inf - inf,
    # not NaN, and ours becomes NaN where torch's turns -inf (a degenerate setting)
    decoupled = name == "adamw" or h.get("decoupled_weight_decay", False)
    return decoupled and _number(h["lr"]) * _number(h.get("weight_decay", 0.0)) > 1


def _assert_like_torch(ours: dict, theirs: dict, start: dict, dtype: torch.dtype, strict_inf: bool = True) -> None:
    rtol = _RTOL[dtype]
    for key, ref in theirs.items():
        mine, p0 = ours[key].double(), start[key].double()
        ref = ref.double()
        finite = ref.isfinite()
        assert mine[finite].isfinite().all(), f"{key}: non-finite where torch is finite: {mine} vs {ref}"
        # infinite where torch's is (an additive update cannot flip inf to -inf as torch's
        # p.mul_(1 - lr * wd) does when lr * wd > 1: only the sign may differ there)
        if strict_inf:
            assert mine[ref.isinf()].isinf().all(), f"{key}: {mine} where torch has {ref}"
        if finite.any():
            moved = (ref - p0)[finite & p0.isfinite()]
            scale = max(p0[p0.isfinite()].abs().max().item() if p0.isfinite().any() else 0.0,
                        moved.abs().max().item() if moved.numel() else 0.0, 1e-300)
            err = (mine[finite] - ref[finite]).abs()
            bound = rtol * (scale + ref[finite].abs())
            assert (err <= bound).all(), f"{key}: {mine} vs torch {ref} (rtol {rtol}, scale {scale:g})"


# ----------------------------------------------------------------------------------
# Properties


@settings(_PROFILE, max_examples=1600)
@given(name=st.sampled_from(ALIASES), data=st.data(), problem=problems())
def test_alias_on_random_inputs_behaves_as_torch_optim(name, data, problem):
    h = data.draw(hyperparams(name))
    theirs = _run_torch(name, h, problem["params"], problem["grads"])
    ours = _run_functional(getattr(fo, name)(**h), problem["params"], problem["grads"])
    _assert_like_torch(ours, theirs, problem["params"], problem["dtype"], not _flips_sign(name, h))


_CHAINED = ("adamw", "adam", "sgd")


def _run_torch_clipped(name: str, h: dict, max_norm: float, params: dict, grads: list) -> dict:
    # optax's clipping rule (fo.clip_by_global_norm: min(1, max_norm / norm), no epsilon,
    # the norm accumulated in float32 at least), then torch.optim's step
    tensors = {k: p.clone().requires_grad_(True) for k, p in params.items()}
    opt = _TORCH[name](list(tensors.values()), foreach=False, **_as_numbers(h))
    for tree in grads:
        present = [g for g in tree.values() if g is not None]
        if present:
            acc = torch.promote_types(present[0].dtype, torch.float32)
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, dtype=acc) for g in present]))
            factor = torch.clamp(max_norm / norm, max=1.0)
        for k, p in tensors.items():
            p.grad = None if tree[k] is None else (tree[k] * factor).to(tree[k].dtype)
        opt.step()
    return {k: p.detach() for k, p in tensors.items()}


@settings(_PROFILE, max_examples=400)
@given(name=st.sampled_from(_CHAINED), data=st.data(), problem=problems(),
       max_norm=st.sampled_from([1e-3, 1.0, 1e30]))
def test_clipped_chain_on_random_inputs_behaves_as_torch(name, data, problem, max_norm):
    # chain(clip_by_global_norm, <alias>) against the same clipping followed by torch.optim
    h = data.draw(hyperparams(name))
    theirs = _run_torch_clipped(name, h, max_norm, problem["params"], problem["grads"])
    tx = fo.chain(fo.clip_by_global_norm(max_norm), getattr(fo, name)(**h))
    ours = _run_functional(tx, problem["params"], problem["grads"])
    _assert_like_torch(ours, theirs, problem["params"], problem["dtype"], not _flips_sign(name, h))


# ----------------------------------------------------------------------------------
# Regressions: the bugs random inputs found, each in a plain test


def _torch_trajectory(cls, h: dict, params: dict, grads: list) -> list[dict]:
    tensors = {k: p.clone().requires_grad_(True) for k, p in params.items()}
    opt = cls(list(tensors.values()), foreach=False, **h)
    out = []
    for tree in grads:
        for k, p in tensors.items():
            p.grad = tree[k].clone()
        opt.step()
        out.append({k: p.detach().clone() for k, p in tensors.items()})
    return out


def _fo_trajectory(tx, params: dict, grads: list) -> list[dict]:
    state, out = tx.init(params), []
    for tree in grads:
        updates, state = tx.update(tree, state, params)
        params = fo.apply_updates(params, updates)
        out.append(params)
    return out


def test_radam_is_finite_where_the_second_moment_overflows():
    # grads ~1e21 in float32: v = (1 - b2) g**2 overflows to inf. The SGD branch (t <= 5)
    # must not read v (sqrt(inf) * 0 was NaN); the rectified branch divides by inf: 0 step
    params = {"w": torch.tensor([1.0, -2.0, 3.0]), "s": torch.tensor(0.5)}
    grads = [{"w": torch.tensor([1e21, -3e21, 2e21]), "s": torch.tensor(-1e21)} for _ in range(7)]
    theirs = _torch_trajectory(torch.optim.RAdam, dict(lr=0.1), params, grads)
    ours = _fo_trajectory(fo.radam(lr=0.1), params, grads)
    for t, (a, b) in enumerate(zip(ours, theirs)):
        for key in params:
            assert a[key].isfinite().all(), (t, key, a[key])
            torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=0)


def test_radam_sgd_branch_has_finite_gradients_where_the_second_moment_overflows():
    # the masked branch carries no NaN into derivatives either (d/dlr of the first step)
    g = torch.tensor([1e21, -2e21])

    def first_step(lr):
        tx = fo.radam(lr=lr)
        return tx.update(g, tx.init(torch.zeros(2)), torch.zeros(2))[0].sum()

    d = torch.func.grad(first_step)(torch.tensor(0.1))
    assert d.isfinite() and d.item() == pytest.approx(-(1e21 - 2e21), rel=1e-6)


def test_sgd_tensor_momentum_zero_ignores_dampening_as_torch():
    params = {"w": torch.tensor([1.0, -2.0], dtype=torch.float64)}
    grads = [{"w": torch.tensor([0.5, 1.5], dtype=torch.float64) * (t + 1)} for t in range(3)]
    h = dict(lr=0.1, momentum=torch.tensor(0.0, dtype=torch.float64), dampening=0.5)
    theirs = _torch_trajectory(torch.optim.SGD, h, params, grads)
    ours = _fo_trajectory(fo.sgd(**h), params, grads)
    for a, b in zip(ours, theirs):  # (ours adds -lr * buf, torch -lr * g: one rounding apart)
        torch.testing.assert_close(a["w"], b["w"], rtol=1e-15, atol=0)
    with pytest.raises(ValueError, match="Nesterov momentum requires a momentum"):
        fo.sgd(momentum=torch.tensor(0.0), nesterov=True)


def test_sgd_tensor_momentum_stays_differentiable():
    # the zero test is a mask: d/d momentum is the one of buf = m * buf + (1 - d) g
    g1, g2 = torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([3.0, -1.0], dtype=torch.float64)

    def two_steps(m):
        tx = fo.sgd(lr=1.0, momentum=m, dampening=0.5)
        p = torch.zeros(2, dtype=torch.float64)
        state = tx.init(p)
        u1, state = tx.update(g1, state, p)
        u2, _ = tx.update(g2, state, p)
        return (u1 + u2).sum()

    m = torch.tensor(0.3, dtype=torch.float64)
    d = torch.func.grad(two_steps)(m)
    h = 1e-6
    assert d.item() == pytest.approx(((two_steps(m + h) - two_steps(m - h)) / (2 * h)).item(), rel=1e-7)
    assert d.item() == pytest.approx(-g1.sum().item())  # buf_2 = m g1 + 0.5 g2; u = -buf
    assert torch.func.grad(two_steps)(torch.tensor(0.0, dtype=torch.float64)).item() == -g1.sum().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name", ["adamw", "adam_decoupled", "nadam_decoupled", "radam_decoupled"])
def test_decoupled_weight_decay_keeps_an_infinite_param_infinite(name, dtype):
    # torch's p.mul_(1 - lr * wd) keeps inf; p * (1 - r) - p was inf - inf = NaN
    alias = name.split("_")[0]
    h = dict(lr=0.1, weight_decay=0.5, **({"decoupled_weight_decay": True} if "_" in name else {}))
    params = {"w": torch.tensor([float("inf"), -float("inf"), 1.0], dtype=dtype)}
    grads = [{"w": torch.tensor([1.0, 2.0, -1.0], dtype=dtype)} for _ in range(2)]
    theirs = _torch_trajectory(_TORCH[alias], h, params, grads)[-1]
    ours = _fo_trajectory(getattr(fo, alias)(**h), params, grads)[-1]
    assert torch.equal(ours["w"][:2], theirs["w"][:2])
    torch.testing.assert_close(ours["w"][2:], theirs["w"][2:], rtol=_RTOL[dtype], atol=0)


def test_decoupled_weight_decay_keeps_an_infinite_param_infinite_in_the_eager_donating_step():
    # the adapter's in-place path (kernels.add_shrink through the scratch buffer)
    import adapters

    w = torch.nn.Parameter(torch.tensor([float("inf"), 1.0]))
    ref = torch.nn.Parameter(w.detach().clone())
    ours = adapters.FunctionalOptimizer([w], fo.adamw, lr=0.1, weight_decay=0.5)
    theirs = torch.optim.AdamW([ref], lr=0.1, weight_decay=0.5, foreach=False)
    for _ in range(2):
        w.grad, ref.grad = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0])
        ours.step()
        theirs.step()
    assert w[0].item() == float("inf")
    torch.testing.assert_close(w.detach(), ref.detach(), rtol=1e-6, atol=0)


def test_add_shrink_reads_an_infinite_param_as_unchanged_in_both_paths():
    p = torch.tensor([float("inf"), -float("inf"), float("nan"), 2.0])
    for donate in (False, True):
        out = fo.kernels.add_shrink([torch.zeros(4)], [p], 0.75, donate=donate)[0]
        assert out[:3].tolist() == [0.0, 0.0, 0.0] and out[3].item() == -0.5


def test_compiled_decay_kernels_keep_infinite_params_and_stay_vectorised():
    # traced, the NaN of inf - inf is cleared by a comparison: inductor's CPU isnan is a
    # scalar loop per vector (it made compiled AdamW 1.4-1.7x torch's fused kernel)
    from torch._inductor.utils import run_and_get_code
    p = torch.tensor([float("inf"), -float("inf"), float("nan"), 2.0] * 4)
    x = torch.zeros(16)
    shrink = torch.compile(lambda x, p: fo.kernels.add_shrink([x], [p], 0.75)[0], fullgraph=True)
    finite = torch.compile(lambda x, p: fo.kernels.add_finite_scaled([x], [p], -0.5)[0], fullgraph=True)
    with torch._inductor.config.patch(fx_graph_cache=False):
        out, codes = run_and_get_code(shrink, x, p)
        out2, codes2 = run_and_get_code(finite, x, p)
    assert out[:3].tolist() == [0.0, 0.0, 0.0] and out[3].item() == -0.5
    assert torch.equal(out, fo.kernels.add_shrink([x], [p], 0.75)[0])
    assert out2[:2].tolist() == [0.0, 0.0] and out2[2].isnan() and out2[3].item() == -1.0
    assert "isnan" not in codes[0] and "isnan" not in codes2[0]


@pytest.mark.parametrize("name", ALIASES)
def test_a_non_0d_tensor_hyperparameter_is_rejected_by_name(name):
    with pytest.raises(ValueError, match=r"Tensor lr must be 1-element.*\blr\b.*\(2,\)"):
        getattr(fo, name)(lr=torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"Invalid lr: lr must be a number or a 0-d tensor.*\(1,\)"):
        getattr(fo, name)(lr=torch.tensor([0.1]))


@pytest.mark.parametrize("name, argument, value", [
    ("sgd", "momentum", 0.9), ("sgd", "weight_decay", 0.1), ("adam", "eps", 1e-8),
    ("adam", "weight_decay", 0.1), ("adagrad", "lr_decay", 0.1), ("adadelta", "rho", 0.9),
    ("rmsprop", "alpha", 0.9), ("asgd", "lambd", 1e-4), ("nadam", "momentum_decay", 4e-3),
])
def test_other_non_0d_tensor_hyperparameters_are_rejected_by_name(name, argument, value):
    with pytest.raises(ValueError, match=rf"Tensor {argument} must be 1-element.*\b{argument}\b"):
        getattr(fo, name)(**{argument: torch.tensor([value, value])})


@pytest.mark.parametrize("name", ["adam", "adamax", "nadam", "radam"])
def test_non_0d_tensor_betas_are_rejected_by_name(name):
    with pytest.raises(ValueError, match=r"beta parameter at index 1"):
        getattr(fo, name)(betas=(0.9, torch.tensor([0.99, 0.99])))


_STATE_FIELDS = {"sgd": "trace", "adam": "mu", "adamw": "mu", "adagrad": "sum_of_squares", "adadelta": "e_g",
                 "adamax": "mu", "nadam": "mu", "radam": "mu", "rmsprop": "nu", "asgd": "ax",
                 "rprop": "step_sizes"}


@pytest.mark.parametrize("shape", [(1,), (2,), (3, 1)])
@pytest.mark.parametrize("name", ALIASES)
def test_a_state_for_other_leaf_shapes_is_rejected_naming_field_and_leaf(name, shape):
    # same tree structure, other leaf shapes: was broadcast silently ((1,) against (3,)) or
    # failed with a raw RuntimeError from a kernel
    kwargs = dict(momentum=0.9) if name in ("sgd", "rmsprop") else {}
    tx = getattr(fo, name)(lr=0.1, **kwargs)
    state = tx.init({"a": torch.zeros(2, 2), "w": torch.zeros(shape)})
    params = {"a": torch.zeros(2, 2), "w": torch.zeros(3)}
    grads = {"a": torch.ones(2, 2), "w": torch.ones(3)}
    match = rf"state field '{_STATE_FIELDS[name]}' at leaf \['w'\] has shape {re.escape(str(shape))}"
    with pytest.raises(ValueError, match=match):
        tx.update(grads, state, params)


def test_a_state_of_another_declared_dtype_is_rejected():
    tx = fo.scale_by_adam(mu_dtype=torch.float32, nu_dtype=torch.float32)
    params = {"w": torch.zeros(3, dtype=torch.bfloat16)}
    state = fo.scale_by_adam().init(params)  # bfloat16 moments
    with pytest.raises(ValueError, match=r"state field 'mu' at leaf \['w'\] has dtype torch.bfloat16.*float32"):
        tx.update({"w": torch.ones(3, dtype=torch.bfloat16)}, state, params)
    tx.update({"w": torch.ones(3, dtype=torch.bfloat16)}, tx.init(params), params)  # its own state: fine


def test_state_shape_check_works_under_vmap_and_compile():
    # per-example shapes under vmap (unbatched state, per-task grads: the MAML setting) and a
    # check made once while tracing under torch.compile(fullgraph=True)
    tx = fo.adam(lr=0.1)
    params = {"w": torch.zeros(3)}
    state = tx.init(params)
    grads = torch.randn(4, 3)
    out = torch.func.vmap(lambda g: tx.update({"w": g}, state, params)[0]["w"])(grads)
    assert out.shape == (4, 3)
    step = torch.compile(lambda g, s: tx.update(g, s, params), fullgraph=True, backend="eager")
    updates, _ = step({"w": grads[0]}, state)
    torch.testing.assert_close(updates["w"], tx.update({"w": grads[0]}, state, params)[0]["w"])
    with pytest.raises(ValueError, match=r"state field 'mu' at leaf \['w'\]"):
        torch.func.vmap(lambda g: tx.update({"w": g}, tx.init({"w": torch.zeros(2)}), params)[0]["w"])(grads)


@pytest.mark.parametrize("name, kwargs", [("adam", {}), ("adagrad", dict(lr_decay=torch.tensor(0.1))),
                                          ("sgd", dict(momentum=0.9, dampening=torch.tensor(0.5)))])
def test_a_0d_float32_leaf_keeps_its_dtype(name, kwargs):
    # per-leaf float64 step scalars promoted a 0-d float32 leaf's update to float64
    tx = getattr(fo, name)(lr=0.1, **kwargs)
    params = {"s": torch.tensor(1.5)}
    state = tx.init(params)
    for _ in range(2):
        updates, state = tx.update({"s": torch.tensor(-0.3)}, state, params)
        assert updates["s"].dtype == torch.float32


def test_sgd_tensor_weight_decay_zero_keeps_an_infinite_param_as_torch():
    # torch skips the decay at weight_decay == 0 (a 0-d tensor too); 0 * inf was NaN
    params = {"w": torch.tensor([float("inf"), 1.0])}
    grads = [{"w": torch.tensor([0.5, 0.5])}]
    h = dict(lr=0.1, weight_decay=torch.tensor(0.0, dtype=torch.float64))
    theirs = _torch_trajectory(torch.optim.SGD, dict(lr=0.1, weight_decay=0.0), params, grads)[-1]
    assert torch.equal(_fo_trajectory(fo.sgd(**h), params, grads)[-1]["w"], theirs["w"])


def test_asgd_keeps_an_infinite_param_infinite():
    # the update was p_new - p: inf - inf
    params = {"w": torch.tensor([float("inf"), 1.0], dtype=torch.float64)}
    grads = [{"w": torch.tensor([0.5, 0.5], dtype=torch.float64)} for _ in range(3)]
    h = dict(lr=0.1, lambd=1e-2, t0=1.0)
    theirs = _torch_trajectory(torch.optim.ASGD, h, params, grads)
    for a, b in zip(_fo_trajectory(fo.asgd(**h), params, grads), theirs):
        assert torch.equal(a["w"][:1], b["w"][:1])
        torch.testing.assert_close(a["w"], b["w"], rtol=1e-12, atol=0)
