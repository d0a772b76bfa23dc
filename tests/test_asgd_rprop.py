"""ASGD and Rprop against torch.optim, step for step.

Parity in float64 (every option pairwise, pure and donating, per-tensor and foreach
kernels), complex128, tensor and scheduled learning rates (which enter ASGD's ``eta``
and only Rprop's initial step sizes); ASGD's averaging (``ax`` against torch's
``state['ax']`` once ``t0`` is passed); Rprop through sign flips and both step-size
bounds; the state fields that hold torch's state keys; purity; torch.compile without
recompiles; torch.func.grad with respect to the learning rate; vmap over a batch of
problems; torch's validation errors and signatures.
"""

from __future__ import annotations

import inspect

import optree
import pytest
import torch

import functional_optim as fo
from parity import (SOMETIMES, case_id, make_grads, make_params, max_rel_diff, pairwise, run_functional,
                    run_torch)

STEPS = 50
TOL = 1e-10

OPTIMIZERS = {
    "asgd": (torch.optim.ASGD, fo.asgd, {
        # t0 = 10: averaging (mu < 1) from step 12, well inside the 50 steps
        "lr": [1e-2, 0.1], "lambd": [1e-4, 0.05], "alpha": [0.75, 0.5], "t0": [1e6, 10],
        "weight_decay": [0, 0.1], "maximize": [False, True]}),
    "rprop": (torch.optim.Rprop, fo.rprop, {
        # the tight bounds are reached both ways within a few sign flips
        "lr": [1e-2, 0.1], "etas": [(0.5, 1.2), (0.3, 1.5)], "step_sizes": [(1e-6, 50), (5e-3, 0.02)],
        "maximize": [False, True]}),
}
FULL = {
    "asgd": dict(lambd=0.05, alpha=0.5, t0=10, weight_decay=0.1),
    "rprop": dict(etas=(0.3, 1.5), step_sizes=(5e-3, 0.02)),
}
BASE_LR = {"asgd": 1e-2, "rprop": 1e-2}
STATE_CLASS = {"asgd": "ScaleByAsgdState", "rprop": "ScaleByRpropState"}

PAIRWISE = [(name, case) for name, (_, _, options) in OPTIMIZERS.items() for case in pairwise(options)]


@pytest.fixture(scope="module")
def problem():
    params = make_params(torch.float64)
    return params, make_grads(params, STEPS)


@pytest.mark.parametrize("donate", [False, True], ids=["pure", "donate"])
@pytest.mark.parametrize("name,case", PAIRWISE, ids=[f"{n}:{case_id(c)}" for n, c in PAIRWISE])
def test_parity_pairwise(problem, name, case, donate):
    cls, alias, _ = OPTIMIZERS[name]
    params, grads = problem
    ref = run_torch(cls, case, params, grads)
    assert max_rel_diff(run_functional(alias(**case), params, grads, donate=donate), ref) <= TOL


@pytest.fixture
def foreach_kernels():
    fo.kernels.set_foreach(True)
    yield
    fo.kernels.set_foreach(None)


@pytest.mark.parametrize("donate", [False, True], ids=["pure", "donate"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_parity_foreach_kernels(problem, foreach_kernels, name, donate):
    cls, alias, _ = OPTIMIZERS[name]
    params, grads = problem
    ref = run_torch(cls, FULL[name], params, grads)
    assert max_rel_diff(run_functional(alias(**FULL[name]), params, grads, donate=donate), ref) <= TOL


@pytest.mark.parametrize("donate", [False, True], ids=["pure", "donate"])
@pytest.mark.parametrize("options", ["defaults", "full"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_parity_complex128(name, options, donate):
    cls, alias, _ = OPTIMIZERS[name]
    kwargs = {} if options == "defaults" else dict(FULL[name], maximize=True)
    params = make_params(torch.complex128)
    grads = make_grads(params, STEPS)
    ref = run_torch(cls, kwargs, params, grads)
    assert max_rel_diff(run_functional(alias(**kwargs), params, grads, donate=donate), ref) <= TOL


def _torch_run(cls, kwargs, params, grads, lrs=None):
    """Params and per-param torch state after every step (lr set per step when given)."""
    leaves = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    opt = cls(list(leaves.values()), **kwargs)
    out = []
    for i, g in enumerate(grads):
        if lrs is not None:
            opt.param_groups[0]["lr"] = lrs[i]
        for n, leaf in leaves.items():
            leaf.grad = None if g[n] is None else g[n].clone()
        opt.step()
        out.append(({n: leaf.detach().clone() for n, leaf in leaves.items()},
                    {n: {key: v.clone() for key, v in opt.state[leaf].items()} for n, leaf in leaves.items()}))
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("donate", [False, True], ids=["pure", "donate"])
def test_asgd_averages_like_torch_after_t0(dtype, donate):
    """``ax`` (and eta, mu) match torch's state at every step, before and after t0."""
    params = make_params(dtype)
    grads = make_grads(params, STEPS)
    kwargs = dict(lr=0.05, lambd=0.01, t0=10, weight_decay=0.1)
    ref = _torch_run(torch.optim.ASGD, kwargs, params, grads)
    tx = fo.asgd(**kwargs)
    state, p = tx.init(params), params
    for step, (g, (want_p, want_state)) in enumerate(zip(grads, ref), start=1):
        g = optree.tree_map(torch.clone, g)
        updates, state = tx.update(g, state, p, donate=donate)
        p = fo.apply_updates(p, updates)
        assert max_rel_diff([p], [want_p]) <= TOL
        want_state = {n: s for n, s in want_state.items() if s}  # torch has no state before a grad
        ax = fo.tree.get(state, "ax")
        assert max_rel_diff([ax], [{n: s["ax"] for n, s in want_state.items()}]) <= TOL
        for n, s in want_state.items():
            assert torch.equal(fo.tree.get(state, "eta")[n], s["eta"])  # float32, bit for bit
            assert torch.equal(fo.tree.get(state, "mu")[n], s["mu"])
    mu = fo.tree.get(state, "mu")
    assert mu["vector"].item() == pytest.approx(1 / (STEPS - 10)) and mu[SOMETIMES].item() < 1
    assert max_rel_diff([fo.tree.get(state, "ax")], [p]) > 1e-3  # the average is not the iterate


def test_rprop_goes_through_sign_flips_and_both_bounds():
    params = make_params(torch.float64)
    grads = make_grads(params, STEPS)
    kwargs = dict(lr=0.01, etas=(0.3, 1.5), step_sizes=(5e-3, 0.02))
    ref = _torch_run(torch.optim.Rprop, kwargs, params, grads)
    tx = fo.rprop(**kwargs)
    state, p = tx.init(params), params
    flips = at_min = at_max = 0
    for g, (want_p, want_state) in zip(grads, ref):
        updates, state = tx.update(g, state, p)
        p = fo.apply_updates(p, updates)
        assert max_rel_diff([p], [want_p]) <= TOL
        prev, sizes = fo.tree.get(state, "prev_updates"), fo.tree.get(state, "step_sizes")
        for n, s in ((n, s) for n, s in want_state.items() if s):
            assert torch.equal(prev[n], s["prev"]) and torch.equal(sizes[n], s["step_size"])
            if g[n] is not None:
                flips += int((prev[n] == 0).sum())
                at_min += int((sizes[n] == 5e-3).sum())
                at_max += int((sizes[n] == 0.02).sum())
    assert flips > 100 and at_min > 50 and at_max > 50


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_lr_tensor_changed_in_place(problem, name):
    cls, alias, _ = OPTIMIZERS[name]
    params, grads = problem
    lrs = [BASE_LR[name] * (1 + 0.5 * ((i % 7) - 3) / 3) for i in range(STEPS)]
    lr = torch.tensor(lrs[0], dtype=torch.float64)
    tx = alias(lr, **FULL[name])
    state, p, ours = tx.init(params), params, []
    for g, value in zip(grads, lrs):
        lr.fill_(value)
        updates, state = tx.update(g, state, p)
        p = fo.apply_updates(p, updates)
        ours.append(p)
    ref = [q for q, _ in _torch_run(cls, FULL[name], params, grads, lrs)]
    assert max_rel_diff(ours, ref) <= TOL


def test_rprop_lr_is_read_at_each_leafs_first_update(problem):
    """The SOMETIMES leaf starts one step later: its step sizes start from the lr of then."""
    params, grads = problem
    lr = torch.tensor(0.01, dtype=torch.float64)
    tx = fo.rprop(lr)
    state = tx.init(params)
    _, state = tx.update(grads[0], state, params)
    lr.fill_(0.02)
    _, state = tx.update(grads[1], state, params)
    sizes = fo.tree.get(state, "step_sizes")
    assert set(sizes[SOMETIMES].tolist()) == {0.02}
    assert set(sizes["vector"].tolist()) <= {0.01 * 0.5, 0.01, 0.01 * 1.2}


@pytest.mark.parametrize("donate", [False, True], ids=["pure", "donate"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_lr_schedule(problem, name, donate):
    cls, alias, _ = OPTIMIZERS[name]
    params, grads = problem
    base = BASE_LR[name]

    def schedule(count):
        return base * 0.97 ** torch.as_tensor(count, dtype=torch.float64)

    lrs = [schedule(i).item() for i in range(STEPS)]
    ours = run_functional(alias(schedule, **FULL[name]), params, grads, donate=donate)
    ref = [q for q, _ in _torch_run(cls, FULL[name], params, grads, lrs)]
    assert max_rel_diff(ours, ref) <= TOL


# torch state key -> the field of the alias's chain state holding it
STATE_FIELDS = {
    "asgd": {"step": "count", "eta": "eta", "mu": "mu", "ax": "ax"},
    "rprop": {"step": "count", "prev": "prev_updates", "step_size": "step_sizes"},
}


def _field(state, cls_name, field):
    found = [node for node in optree.tree_flatten(state, is_leaf=lambda x: type(x).__name__ == cls_name)[0]
             if type(node).__name__ == cls_name]
    assert len(found) == 1, f"{cls_name} appears {len(found)} times"
    return getattr(found[0], field)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_state_fields_hold_torch_state(name):
    cls, alias, _ = OPTIMIZERS[name]
    params = make_params(torch.complex128)
    grads = make_grads(params, 14)  # past t0 = 10
    want = _torch_run(cls, FULL[name], params, grads)[-1][1]
    tx = alias(**FULL[name])
    state, p = tx.init(params), params
    for g in grads:
        updates, state = tx.update(g, state, p)
        p = fo.apply_updates(p, updates)
    for key, field in STATE_FIELDS[name].items():
        tree = _field(state, STATE_CLASS[name], field)
        if field != "count":  # a field name unique in the chain is found by name alone
            assert fo.tree.get(state, field) is tree
        for n in params:
            got, ref = tree[n], want[n][key]
            if key == "step":
                assert got.dtype == torch.int32 and got.shape == () and got.item() == ref.item()
            elif key in ("eta", "mu"):  # torch's float32 0-d scalars, bit for bit
                assert got.shape == () and got.dtype == ref.dtype == torch.float32 and torch.equal(got, ref)
            else:
                torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)
    counts = _field(state, STATE_CLASS[name], "count")
    assert counts[SOMETIMES].item() == 9 and counts["vector"].item() == 14  # None grads do not count


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_update_is_pure(problem, name):
    _, alias, _ = OPTIMIZERS[name]
    params, grads = problem
    tx = alias(**FULL[name])
    state = tx.init(params)
    for g in grads[:2]:
        _, state = tx.update(g, state, params)
    snapshot = optree.tree_map(torch.clone, (grads[2], state, params))
    first = tx.update(grads[2], state, params)
    second = tx.update(grads[2], state, params)
    assert optree.tree_all(optree.tree_map(torch.equal, first, second))
    assert optree.tree_all(optree.tree_map(torch.equal, (grads[2], state, params), snapshot))


def test_asgd_needs_params():
    tx = fo.asgd()
    params = {"w": torch.zeros(2)}
    with pytest.raises(ValueError, match="params"):
        tx.update({"w": torch.ones(2)}, tx.init(params))


@pytest.mark.parametrize("donate", [False, True], ids=["pure", "donate"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_compile_fullgraph_no_recompiles(name, donate):
    _, alias, _ = OPTIMIZERS[name]
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    # No 0-d leaf: torch 2.13's AOT autograd drops in-place writes into 0-d float64 inputs.
    params = make_params(torch.float64, shapes={"a": (3,), "b": (2, 2)})
    grads = make_grads(params, 20)
    lr = torch.tensor(BASE_LR[name], dtype=torch.float64)
    tx = alias(lr, **dict(FULL[name], t0=5) if name == "asgd" else FULL[name])  # ASGD: averaging too
    compiled = torch.compile(tx.update, fullgraph=True, backend=counter)
    eager_state = comp_state = tx.init(params)
    eager_p = comp_p = params
    for i, g in enumerate(grads):
        lr.fill_(BASE_LR[name] * (1 + 0.05 * i))
        eager_u, eager_state = tx.update(g, eager_state, eager_p)
        comp_u, comp_state = compiled(optree.tree_map(torch.clone, g), comp_state, comp_p, donate=donate)
        if i == 0:
            compilations = counter.frame_count
        eager_p = fo.apply_updates(eager_p, eager_u)
        comp_p = fo.apply_updates(comp_p, comp_u)
        assert max_rel_diff([comp_p], [eager_p]) <= TOL
        assert optree.tree_all(optree.tree_map(torch.equal, comp_state, eager_state))
    assert 1 <= compilations <= 2 and counter.frame_count == compilations  # no recompilation


@pytest.fixture
def float64_default():
    # torch keeps ASGD's eta in the default scalar dtype: float64 here, so finite
    # differences in lr are not swamped by float32 rounding of eta
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _smooth_grads(p, shift):
    return {n: x ** 3 - 0.5 * x + shift[n] for n, x in p.items()}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_grad_wrt_lr_matches_finite_differences(float64_default, name):
    """ASGD: lr enters every step's eta. Rprop: lr is only the initial step size (within
    the step-size bounds), so the gradient flows through the first step's sizes."""
    _, alias, _ = OPTIMIZERS[name]
    params = make_params(torch.float64, shapes={"v": (4,), "m": (2, 3)})
    shift = make_params(torch.float64, seed=5, shapes={"v": (4,), "m": (2, 3)})
    kwargs = dict(FULL[name], t0=1) if name == "asgd" else dict(FULL[name], step_sizes=(1e-6, 50))

    def loss_after_three_steps(lr):
        tx = alias(lr, **kwargs)
        p, state = params, tx.init(params)
        for _ in range(3):
            updates, state = tx.update(_smooth_grads(p, shift), state, p)
            p = fo.apply_updates(p, updates)
        ax = fo.tree.get(state, "ax") if name == "asgd" else p  # ASGD: through the average too
        return sum((x ** 2).sum() + (a ** 2).sum() for x, a in zip(p.values(), ax.values()))

    lr = torch.tensor(BASE_LR[name] * 5, dtype=torch.float64)
    grad = torch.func.grad(loss_after_three_steps)(lr)
    h = 1e-6 * lr.item()
    fd = (loss_after_three_steps(lr + h) - loss_after_three_steps(lr - h)) / (2 * h)
    assert grad.abs() > 1e-3
    assert abs(grad.item() - fd.item()) <= 1e-6 * abs(fd.item())


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_vmap_over_problems_matches_loop(name):
    _, alias, _ = OPTIMIZERS[name]
    batch, steps = 4, 8
    problems = [make_params(torch.float64, seed=10 + b) for b in range(batch)]
    grads = [make_grads(problems[b], steps, seed=20 + b) for b in range(batch)]
    tx = alias(**dict(FULL[name], t0=3) if name == "asgd" else FULL[name])  # ASGD: averaging too

    def stack(trees):
        return optree.tree_map(lambda *xs: torch.stack(xs), *trees)

    def dims(tree):  # vmap counts None as a leaf: it must get in_dim None
        return optree.tree_map(lambda x: None if x is None else 0, tree, none_is_leaf=True)

    params = stack(problems)
    state = stack([tx.init(p) for p in problems])
    for t in range(steps):
        g = {n: None if grads[0][t][n] is None else torch.stack([grads[b][t][n] for b in range(batch)])
             for n in params}
        batched_update = torch.func.vmap(lambda g, s, p: tx.update(g, s, p),
                                         in_dims=(dims(g), dims(state), dims(params)),
                                         out_dims=(dims(g), dims(state)))
        updates, state = batched_update(g, state, params)
        params = fo.apply_updates(params, updates)
    for b in range(batch):
        loop = run_functional(tx, problems[b], grads[b])[-1]
        assert max_rel_diff([{n: x[b] for n, x in params.items()}], [loop]) <= TOL


INVALID = [
    ("asgd", dict(lr=-1.0), "lr"), ("asgd", dict(weight_decay=-1.0), "weight_decay"),
    ("rprop", dict(lr=-1.0), "lr"), ("rprop", dict(etas=(0.0, 1.2)), "etas"),
    ("rprop", dict(etas=(1.0, 1.2)), "etas"), ("rprop", dict(etas=(0.5, 1.0)), "etas"),
]


@pytest.mark.parametrize("name,kwargs,arg", INVALID, ids=[f"{n}:{case_id(k)}" for n, k, _ in INVALID])
def test_invalid_hyperparameters_raise_torchs_error(name, kwargs, arg):
    cls, alias, _ = OPTIMIZERS[name]
    with pytest.raises(Exception) as torch_error:
        cls([torch.zeros(2, requires_grad=True)], **kwargs)
    with pytest.raises(torch_error.type) as ours:
        alias(**kwargs)
    assert arg in str(ours.value)


def test_transform_validation_names_the_argument():
    for kwargs, arg in [(dict(eta_minus=1.0), "eta_minus"), (dict(eta_plus=0.9), "eta_plus"),
                        (dict(learning_rate=-1.0), "learning_rate")]:
        with pytest.raises(ValueError, match=arg):
            fo.scale_by_rprop(**{"learning_rate": 0.1, **kwargs})
    with pytest.raises(ValueError, match="learning_rate"):
        fo.scale_by_asgd(-1.0)
    with pytest.raises(TypeError, match="t0"):
        fo.scale_by_asgd(0.1, t0="soon")


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_signature_is_torchs(name):
    cls, alias, _ = OPTIMIZERS[name]
    dropped = {"self", "params", "foreach", "capturable", "differentiable", "fused"}
    theirs = [(p.name, p.default) for p in inspect.signature(cls).parameters.values() if p.name not in dropped]
    ours = inspect.signature(alias).parameters
    assert [(p.name, p.default) for p in ours.values()] == theirs
    assert ours["maximize"].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("donate", [False, True], ids=["pure", "donate"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_float32_params_keep_their_dtype_and_track_torch(name, donate):
    """float32 (with a 0-d leaf, which a float64 per-step scalar would promote): updates
    and state stay float32 and the trajectory is torch's up to float32 rounding."""
    cls, alias, _ = OPTIMIZERS[name]
    params = make_params(torch.float32)
    grads = make_grads(params, 20)
    tx = alias(**FULL[name])
    state, p, ours = tx.init(params), params, []
    for g in grads:
        updates, state = tx.update(optree.tree_map(torch.clone, g), state, p, donate=donate)
        assert {u.dtype for u in optree.tree_leaves(updates)} == {torch.float32}
        p = fo.apply_updates(p, updates)
        ours.append(p)
    assert {x.dtype for x in optree.tree_leaves(state)} == {torch.float32, torch.int32}
    assert max_rel_diff(ours, run_torch(cls, FULL[name], params, grads)) <= 1e-5
