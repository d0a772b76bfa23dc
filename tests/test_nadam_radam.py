"""NAdam and RAdam against torch.optim, step for step.

Parity in float64 (every option pairwise, pure and donating, per-tensor and foreach
kernels), complex128, tensor and scheduled learning rates; RAdam across its rho_t > 5
switch; the state fields that hold torch's state keys (NAdam's float32 ``mu_product``);
purity; torch.compile without recompiles; torch.func.grad with respect to the learning
rate; vmap over a batch of problems; torch's validation errors and signatures.
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
    "nadam": (torch.optim.NAdam, fo.nadam, {
        "betas": [(0.9, 0.999), (0.5, 0.9)], "eps": [1e-8, 1e-2], "weight_decay": [0, 0.1],
        "momentum_decay": [4e-3, 0.1], "decoupled_weight_decay": [False, True], "maximize": [False, True]}),
    "radam": (torch.optim.RAdam, fo.radam, {
        # beta2 = 0.7 moves the rho_t > 5 switch from t = 6 to t = 10
        "betas": [(0.9, 0.999), (0.5, 0.7)], "eps": [1e-8, 1e-2], "weight_decay": [0, 0.1],
        "decoupled_weight_decay": [False, True], "maximize": [False, True]}),
}
FULL = {
    "nadam": dict(betas=(0.5, 0.9), weight_decay=0.1, momentum_decay=0.1),
    "radam": dict(betas=(0.5, 0.7), weight_decay=0.1, decoupled_weight_decay=True),
}
BASE_LR = {"nadam": 2e-3, "radam": 1e-3}
STATE_CLASS = {"nadam": "ScaleByNadamState", "radam": "ScaleByAdamState"}

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


def _rho(t, b2):
    rho_inf = 2 / (1 - b2) - 1
    return rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)


@pytest.mark.parametrize("b2", [0.999, 0.7])
def test_radam_crosses_the_rho_switch_step_by_step(b2):
    """Each step's update is torch's: unrectified (m / bc1) up to the switch, rectified after."""
    switch = next(t for t in range(1, STEPS) if _rho(t, b2) > 5)
    assert 1 < switch < 15 and _rho(switch - 1, b2) <= 5
    params = make_params(torch.float64, shapes={"v": (5,), "m": (4, 3)})
    grads = make_grads(params, 2 * switch, none_every=10 ** 9)
    tx = fo.radam(lr=1e-3, betas=(0.9, b2))
    state, p = tx.init(params), params
    ref = run_torch(torch.optim.RAdam, dict(lr=1e-3, betas=(0.9, b2)), params, grads)
    m = {n: torch.zeros_like(x) for n, x in params.items()}
    for t, (g, want) in enumerate(zip(grads, ref), start=1):
        updates, state = tx.update(g, state, p)
        m = {n: 0.9 * m[n] + 0.1 * g[n] for n in m}
        plain = {n: -1e-3 * m[n] / (1 - 0.9 ** t) for n in m}  # the SGD-with-momentum branch
        is_plain = max_rel_diff([updates], [plain]) <= 1e-12
        assert is_plain == (t < switch)
        p = fo.apply_updates(p, updates)
        assert max_rel_diff([p], [want]) <= TOL


def _torch_with_lrs(cls, kwargs, params, grads, lrs):
    leaves = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    opt = cls(list(leaves.values()), **kwargs)
    out = []
    for g, lr in zip(grads, lrs):
        opt.param_groups[0]["lr"] = lr
        for n, leaf in leaves.items():
            leaf.grad = None if g[n] is None else g[n].clone()
        opt.step()
        out.append({n: leaf.detach().clone() for n, leaf in leaves.items()})
    return out


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
    assert max_rel_diff(ours, _torch_with_lrs(cls, FULL[name], params, grads, lrs)) <= TOL


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
    assert max_rel_diff(ours, _torch_with_lrs(cls, FULL[name], params, grads, lrs)) <= TOL


# torch state key -> the field of the alias's chain state holding it
STATE_FIELDS = {
    "nadam": {"step": "count", "exp_avg": "mu", "exp_avg_sq": "nu", "mu_product": "mu_product"},
    "radam": {"step": "count", "exp_avg": "mu", "exp_avg_sq": "nu"},
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
    grads = make_grads(params, 7)
    leaves = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    opt = cls(list(leaves.values()), **FULL[name])
    tx = alias(**FULL[name])
    state, p = tx.init(params), params
    for g in grads:
        for n, leaf in leaves.items():
            leaf.grad = None if g[n] is None else g[n].clone()
        opt.step()
        updates, state = tx.update(g, state, p)
        p = fo.apply_updates(p, updates)
    for key, field in STATE_FIELDS[name].items():
        tree = _field(state, STATE_CLASS[name], field)
        if field != "count":  # a field name unique in the chain is found by name alone
            assert fo.tree.get(state, field) is tree
        for n, leaf in leaves.items():
            want, got = opt.state[leaf][key], tree[n]
            if key == "step":
                assert got.dtype == torch.int32 and got.shape == () and got.item() == want.item()
            elif key == "mu_product":  # torch's float32 0-d scalar, bit for bit
                assert got.shape == () and got.dtype == want.dtype == torch.float32
                assert torch.equal(got, want)
            else:
                torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    counts = _field(state, STATE_CLASS[name], "count")
    assert counts[SOMETIMES].item() == 4 and counts["vector"].item() == 7  # None grads do not count


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
    tx = alias(lr, **FULL[name])
    compiled = torch.compile(tx.update, fullgraph=True, backend=counter)
    eager_state = comp_state = tx.init(params)
    eager_p = comp_p = params
    for i, g in enumerate(grads):  # crosses RAdam's switch (t = 10 with beta2 = 0.7)
        lr.fill_(BASE_LR[name] * (1 + 0.05 * i))
        eager_u, eager_state = tx.update(g, eager_state, eager_p)
        comp_u, comp_state = compiled(optree.tree_map(torch.clone, g), comp_state, comp_p, donate=donate)
        if i == 0:
            compilations = counter.frame_count
        eager_p = fo.apply_updates(eager_p, eager_u)
        comp_p = fo.apply_updates(comp_p, comp_u)
        assert max_rel_diff([comp_p], [eager_p]) <= TOL
    assert 1 <= compilations <= 2 and counter.frame_count == compilations  # no recompilation


def _smooth_grads(p, shift):
    return {n: x ** 3 - 0.5 * x + shift[n] for n, x in p.items()}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_grad_wrt_lr_matches_finite_differences(name):
    _, alias, _ = OPTIMIZERS[name]
    params = make_params(torch.float64, shapes={"v": (4,), "m": (2, 3)})
    shift = make_params(torch.float64, seed=5, shapes={"v": (4,), "m": (2, 3)})

    def loss_after_three_steps(lr):
        tx = alias(lr, **FULL[name])
        p, state = params, tx.init(params)
        for _ in range(3):
            updates, state = tx.update(_smooth_grads(p, shift), state, p)
            p = fo.apply_updates(p, updates)
        return sum((x ** 2).sum() for x in p.values())

    lr = torch.tensor(BASE_LR[name] * 5, dtype=torch.float64)
    grad = torch.func.grad(loss_after_three_steps)(lr)
    h = 1e-6 * lr.item()
    fd = (loss_after_three_steps(lr + h) - loss_after_three_steps(lr - h)) / (2 * h)
    assert grad.abs() > 1e-3
    assert abs(grad.item() - fd.item()) <= 1e-6 * abs(fd.item())


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_vmap_over_problems_matches_loop(name):
    _, alias, _ = OPTIMIZERS[name]
    batch, steps = 4, 12  # past RAdam's switch at t = 10
    problems = [make_params(torch.float64, seed=10 + b) for b in range(batch)]
    grads = [make_grads(problems[b], steps, seed=20 + b) for b in range(batch)]
    tx = alias(**FULL[name])

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
    ("nadam", dict(lr=-1.0), "lr"), ("nadam", dict(eps=-1.0), "eps"),
    ("nadam", dict(betas=(1.0, 0.999)), "beta"), ("nadam", dict(betas=(0.9, -0.1)), "beta"),
    ("nadam", dict(weight_decay=-1.0), "weight_decay"), ("nadam", dict(momentum_decay=-1.0), "momentum_decay"),
    ("radam", dict(lr=-1.0), "lr"), ("radam", dict(eps=-1.0), "eps"),
    ("radam", dict(betas=(-0.1, 0.999)), "beta"), ("radam", dict(betas=(0.9, 1.0)), "beta"),
    ("radam", dict(weight_decay=-1.0), "weight_decay"),
]


@pytest.mark.parametrize("name,kwargs,arg", INVALID, ids=[f"{n}:{case_id(k)}" for n, k, _ in INVALID])
def test_invalid_hyperparameters_raise_torchs_error(name, kwargs, arg):
    cls, alias, _ = OPTIMIZERS[name]
    with pytest.raises(Exception) as torch_error:
        cls([torch.zeros(2, requires_grad=True)], **kwargs)
    with pytest.raises(torch_error.type) as ours:
        alias(**kwargs)
    assert arg in str(ours.value)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_signature_is_torchs(name):
    cls, alias, _ = OPTIMIZERS[name]
    dropped = {"self", "params", "foreach", "capturable", "differentiable", "fused"}
    theirs = [(p.name, p.default) for p in inspect.signature(cls).parameters.values() if p.name not in dropped]
    ours = inspect.signature(alias).parameters
    assert [(p.name, p.default) for p in ours.values()] == theirs
    assert ours["maximize"].kind is inspect.Parameter.KEYWORD_ONLY


def test_scale_by_radam_options():
    """optax's eps_root and nesterov, and a threshold that never rectifies (plain momentum)."""
    g = {"w": torch.tensor([0.5, -2.0], dtype=torch.float64)}
    params = {"w": torch.zeros(2, dtype=torch.float64)}
    plain = fo.scale_by_radam(threshold=float("inf"))
    state = plain.init(params)
    for t in range(1, 9):
        u, state = plain.update(g, state)
        torch.testing.assert_close(u["w"], g["w"], rtol=1e-14, atol=0)  # m / bc1 of a constant g
    nest = fo.scale_by_radam(b1=0.5, nesterov=True)
    u, _ = nest.update(g, nest.init(params))
    # t = 1: b1 m / (1 - b1**2) + (1 - b1) g / (1 - b1), m = (1 - b1) g
    torch.testing.assert_close(u["w"], (0.5 * 0.5 / 0.75 + 1.0) * g["w"], rtol=1e-14, atol=0)
    root = fo.scale_by_radam(eps=0.0, eps_root=1.0)
    state = root.init(params)
    for _ in range(6):  # t = 6: rectified
        u, state = root.update(g, state)
    r = _rect(6, 0.999)
    torch.testing.assert_close(u["w"], r * g["w"] / (g["w"] ** 2 + 1.0).sqrt(), rtol=1e-12, atol=0)


def _rect(t, b2):
    rho_inf, rho = 2 / (1 - b2) - 1, _rho(t, b2)
    return ((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)) ** 0.5


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
