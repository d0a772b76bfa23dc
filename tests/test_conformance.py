"""Catalogue-wide conformance: every registered transform through the core contracts.

Driven by ``tests/conformance_registry.py`` (read its docstring). Each check is one test
parametrized over every (entry, sample) pair of the registry except the exceptions it
lists with a reason (``compile``, the expensive one, over one sample per entry). The problem is tiny (params ``{"w": (3, 2), "b": (2,)}``, float64
unless stated, ``K = 3`` steps) so that the whole file stays fast.

Checks: purity, lr_grad, param_grad, vmap_batch, vmap_shared, vmap_hypergrad,
second_order, compile, none_leaves, bf16 (see each test's docstring).
"""

from __future__ import annotations

import inspect
import types

import optree
import pytest
import torch

import functional_optim as fo
from compile_counting import CountingBackend
from conformance_registry import (CHECKS, ENTRIES, LR, NON_TRANSFORMS, ONE_SAMPLE_PER_ENTRY, case_id,
                                  cases, public_names)

DT = torch.float64
K = 3  # unrolled steps
T = 3  # tasks / batch size of the vmap checks
H = 1e-6  # central finite-difference step
FD_RTOL = 1e-6
VMAP_RTOL = 1e-10


def _params(seed: int = 0, dtype: torch.dtype = DT) -> dict:
    gen = torch.Generator().manual_seed(100 + seed)
    return {"w": torch.randn(3, 2, generator=gen, dtype=DT).to(dtype),
            "b": (torch.tensor([0.3, -0.4], dtype=DT) + 0.1 * torch.randn(2, generator=gen, dtype=DT)).to(dtype)}


def _data(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(x, y, xv, yv): a train and a validation set of a small regression task."""
    gen = torch.Generator().manual_seed(200 + seed)
    return tuple(torch.randn(*shape, generator=gen, dtype=DT) for shape in ((6, 3), (6, 2), (5, 3), (5, 2)))


def _loss(p: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Smooth and non-quadratic: every gradient coordinate is nonzero almost surely."""
    x, y = x.to(p["w"].dtype), y.to(p["w"].dtype)
    out = x @ p["w"] + p["b"]
    return ((out - y) ** 2).mean() + 0.1 * torch.tanh(out).square().mean()


def _zero_grad_loss(p: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Some gradient coordinates are exactly zero at every step: ``relu(b)`` with ``b[1] < 0``
    and the last input feature identically 0 (so row ``w[2]`` gets no gradient)."""
    x = torch.cat([x[:, :2], torch.zeros_like(x[:, 2:])], dim=1)
    out = x @ p["w"] + torch.relu(p["b"])
    if "u" in p:  # a leaf that does not touch the loss (its gradient is exactly zero)
        out = out + 0 * p["u"]
    return ((out - y) ** 2).mean() + 0.1 * torch.tanh(out).square().mean()


def _rand_grads(seed: int, like: dict, steps: int = K) -> list[dict]:
    """Random gradient trees, with an exact zero in each leaf (the adaptive transforms'
    0/0 and sqrt(0) corners)."""
    gen = torch.Generator().manual_seed(300 + seed)
    out = []
    for _ in range(steps):
        g = {k: torch.randn(v.shape, generator=gen, dtype=DT) for k, v in like.items()}
        g["w"][0, 1] = 0.0
        g["b"][0] = 0.0
        out.append(g)
    return out


def _form(entry, g):
    """A dense gradient tree in the form the entry's ``update`` takes."""
    if entry.grad_form is None:
        return g
    return optree.tree_map(entry.grad_form, g, none_is_leaf=True)


def _extras(entry, params, data, loss=_loss) -> dict:
    if entry.extras is None:
        return {}
    x, y = data[0], data[1]
    return entry.extras(params, lambda p: loss(p, x, y))


def _unrolled(entry, tx, params, data, loss=_loss, steps: int = K) -> torch.Tensor:
    """The validation loss after ``steps`` updates of ``tx`` on the train loss."""
    x, y, xv, yv = data
    state = tx.init(params)
    for _ in range(steps):
        g = torch.func.grad(loss)(params, x, y)
        u, state = tx.update(_form(entry, g), state, params, **_extras(entry, params, data, loss))
        params = fo.apply_updates(params, u)
    return loss(params, xv, yv)


def _leaves(tree):
    return optree.tree_flatten(tree, none_is_leaf=True)


def _clone(tree):
    return optree.tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, tree, none_is_leaf=True)


def _assert_identical(a, b, what: str) -> None:
    la, sa = _leaves(a)
    lb, sb = _leaves(b)
    assert sa == sb, f"{what}: structure differs: {sa} vs {sb}"
    for i, (x, y) in enumerate(zip(la, lb)):
        if isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor) and x.dtype == y.dtype and x.shape == y.shape, f"{what}: leaf {i}"
            assert torch.equal(x, y) or (torch.isnan(x) == torch.isnan(y)).all() and torch.equal(
                torch.nan_to_num(x), torch.nan_to_num(y)), f"{what}: leaf {i} differs: {x} vs {y}"
        else:
            assert x == y, f"{what}: leaf {i}: {x!r} vs {y!r}"


def _assert_close(a, b, rtol: float, what: str) -> None:
    """Leafwise ``|a - b| <= rtol * max(|b|)`` per leaf (relative to the leaf's scale)."""
    la, sa = _leaves(a)
    lb, sb = _leaves(b)
    assert sa == sb, f"{what}: structure differs"
    for i, (x, y) in enumerate(zip(la, lb)):
        if not isinstance(x, torch.Tensor):
            assert x == y, f"{what}, leaf {i}: {x!r} vs {y!r}"
            continue
        if not (y.is_floating_point() or y.is_complex()):
            assert torch.equal(x, y), f"{what}, leaf {i}: {x} vs {y}"
            continue
        scale = max(y.abs().max().item(), 1e-300) if y.numel() else 1.0
        torch.testing.assert_close(x, y, rtol=rtol, atol=rtol * scale, msg=lambda m: f"{what}, leaf {i}: {m}")


def _stack(trees):
    return optree.tree_map(lambda *xs: torch.stack(xs), *trees)


def _unstack(tree, i):
    return optree.tree_map(lambda x: x[i], tree)


def _dims(tree):
    """vmap in/out dims for a tree: 0 at tensors, None at None and non-tensor leaves.

    Needed because several states hold None fields (e.g. ScaleByRmsState.mu without
    ``centered``, ScaleByAsgdState.schedule_count without a schedule), which torch's vmap
    refuses with the default ``in_dims=0`` / ``out_dims=0``."""
    return fo.tree.batch_dims(tree)


# ---------------------------------------------------------------------------------------
# The registry itself
# ---------------------------------------------------------------------------------------

def test_every_public_export_is_classified():
    registered = {e.name for e in ENTRIES} | set(NON_TRANSFORMS)
    missing = sorted(public_names() - registered)
    assert not missing, (f"exported but not in tests/conformance_registry.py (add an Entry with samples, "
                         f"or a NON_TRANSFORMS kind): {missing}")


def test_every_registry_name_is_exported():
    public = public_names()
    stale = sorted(({e.name for e in ENTRIES} | set(NON_TRANSFORMS)) - public)
    assert not stale, f"registry names that functional_optim does not export: {stale}"
    not_in_all = sorted(e.name for e in ENTRIES if e.name not in fo.__all__)
    assert not not_in_all, f"transform entries missing from fo.__all__: {not_in_all}"
    both = sorted({e.name for e in ENTRIES} & set(NON_TRANSFORMS))
    assert not both, f"classified twice: {both}"
    names = [e.name for e in ENTRIES]
    assert len(names) == len(set(names)), "duplicate entries"


def test_registry_kinds_are_what_they_say():
    for e in ENTRIES:
        assert e.kind in ("alias", "transform", "wrapper"), e.name
        assert e.samples, f"{e.name} has no sample"
        assert len({s.name for s in e.samples}) == len(e.samples), f"{e.name}: duplicate sample names"
        for s in e.samples:
            assert isinstance(s.build(), fo.GradientTransformation), f"{e.name}-{s.name}: build()"
            assert isinstance(s.make(LR), fo.GradientTransformation), f"{e.name}-{s.name}: make(lr)"
    for name, kind in NON_TRANSFORMS.items():
        obj = getattr(fo, name)
        if kind == "module":
            assert isinstance(obj, types.ModuleType), name
        elif kind == "state":
            assert isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields"), name
        elif kind in ("schedule", "utility"):
            assert inspect.isfunction(obj), name
            ret = inspect.signature(obj).return_annotation
            # a function declared to return a transform must be a registry entry with samples
            assert "GradientTransformation" not in str(ret), f"{name} returns a GradientTransformation"
        elif kind == "marker":
            probe = fo.identity()
            args = (fo.Needs.GLOBAL,) if name == "declare" else ()  # what it declares
            assert obj(probe, *args) is probe, name
        elif kind == "data":
            assert isinstance(obj, type), name
        else:
            assert kind == "type", f"{name}: unknown kind {kind!r}"
    # schedules really are schedule factories: they return callables of the count
    assert callable(fo.linear_schedule(1.0, 0.0, 3))


def test_every_exception_names_a_check_and_gives_a_reason():
    total = 0
    for e in ENTRIES:
        for check, reason in list(e.exceptions.items()) + [
                (c, r) for s in e.samples for c, r in s.exceptions.items()]:
            assert check in CHECKS, f"{e.name}: unknown check {check!r}"
            assert isinstance(reason, str) and len(reason.strip()) >= 20, f"{e.name}/{check}: give the reason"
            total += 1
        if e.bf16_update_from_params is not None:  # a relaxation of the bf16 check: say why
            assert len(e.bf16_update_from_params.strip()) >= 20, f"{e.name}: give the reason"
    # 13 of them are LBFGS's and Kron's: both branch on host-read values by design (torch's
    # line search, timm's random preconditioner-update draws)
    assert total <= 20, f"{total} exceptions: keep them few"


def test_registry_covers_every_check_with_most_samples():
    n = sum(len(e.samples) for e in ENTRIES)
    for check in CHECKS:
        if check in ONE_SAMPLE_PER_ENTRY:
            covered = {e.name for e, _ in cases(check)}
            excepted = {e.name for e in ENTRIES if all(e.exception(s, check) for s in e.samples)}
            assert covered | excepted == {e.name for e in ENTRIES}
            assert len(excepted) <= 2, f"{check}: too many exceptions"
        else:
            assert len(cases(check)) >= n - 6, f"{check}: too many exceptions"


# ---------------------------------------------------------------------------------------
# 1. purity
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", cases("purity"), ids=case_id)
def test_purity(case):
    """Updating twice on the same inputs gives bit-identical outputs, and the inputs
    (updates, state, params) are left bit for bit as they were."""
    entry, sample = case
    tx = sample.build()
    params, data = _params(), _data()
    x, y = data[0], data[1]
    state = tx.init(params)
    for _ in range(2):  # a non-trivial state first
        g = torch.func.grad(_loss)(params, x, y)
        u, state = tx.update(_form(entry, g), state, params, **_extras(entry, params, data))
        params = fo.apply_updates(params, u)
    g = _form(entry, torch.func.grad(_loss)(params, x, y))
    before = _clone((g, state, params))
    extra = _extras(entry, params, data)
    out1 = tx.update(g, state, params, **extra)
    _assert_identical((g, state, params), before, "inputs after the first update")
    out2 = tx.update(g, state, params, **extra)
    _assert_identical((g, state, params), before, "inputs after the second update")
    _assert_identical(out1, out2, "outputs of two updates on the same inputs")
    assert any(isinstance(t, torch.Tensor) and t.numel() for t in _leaves(out1[0])[0])


# ---------------------------------------------------------------------------------------
# 2. and 3. gradients through K unrolled steps vs central finite differences
# ---------------------------------------------------------------------------------------

def _fd_close(g: torch.Tensor, fd: torch.Tensor, what: str) -> None:
    assert torch.isfinite(g), f"{what}: gradient {g}"
    assert abs(g - fd) <= FD_RTOL * max(abs(fd), 1e-3), f"{what}: autograd {g.item():.12g} vs FD {fd.item():.12g}"


@pytest.mark.parametrize("case", cases("lr_grad"), ids=case_id)
def test_lr_hypergradient_matches_finite_differences(case):
    """d(validation loss after K steps)/d(lr) for a 0-d float64 lr tensor."""
    entry, sample = case
    params, data = _params(), _data()
    lr = torch.tensor(LR, dtype=DT)

    def f(lr):
        return _unrolled(entry, sample.make(lr), params, data)

    g = torch.func.grad(f)(lr)
    fd = (f(lr + H) - f(lr - H)) / (2 * H)
    _fd_close(g, fd, "d/dlr")


@pytest.mark.parametrize("name", ["asgd", "scale_by_asgd"])
def test_asgd_lr_hypergradient_with_float64_scalars(name):
    """The ASGD entries' lr_grad check (their registry exception), with float64 scalar
    state: torch (and scale_by_asgd) keep eta in the default dtype, here float64."""
    entry = next(e for e in ENTRIES if e.name == name)
    params, data = _params(), _data()
    lr = torch.tensor(LR, dtype=DT)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        for sample in entry.samples:
            def f(lr):
                return _unrolled(entry, sample.make(lr), params, data)

            assert fo.tree.get(sample.make(lr).init(params), "eta")["w"].dtype == DT
            g = torch.func.grad(f)(lr)
            fd = (f(lr + H) - f(lr - H)) / (2 * H)
            _fd_close(g, fd, f"{sample.name}: d/dlr")
    finally:
        torch.set_default_dtype(previous)


_COORDS = (("w", (0, 0)), ("w", (2, 1)), ("b", (1,)))


@pytest.mark.parametrize("case", cases("param_grad"), ids=case_id)
def test_initial_params_gradient_matches_finite_differences(case):
    """d(validation loss after K steps)/d(initial params) at a few coordinates."""
    entry, sample = case
    params, data = _params(), _data()

    def f(p):
        return _unrolled(entry, sample.make(LR), p, data)

    grads = torch.func.grad(f)(params)
    for key, idx in _COORDS:
        plus, minus = _clone(params), _clone(params)
        plus[key][idx] += H
        minus[key][idx] -= H
        fd = (f(plus) - f(minus)) / (2 * H)
        _fd_close(grads[key][idx], fd, f"d/d{key}{list(idx)}")
    assert all(torch.isfinite(v).all() for v in grads.values())


# ---------------------------------------------------------------------------------------
# 4.-6. vmap
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", cases("vmap_batch"), ids=case_id)
def test_vmap_over_problems_equals_loop(case):
    """A batch of problems (batched params, a stacked state from per-problem inits, batched
    gradients) under vmap gives the per-problem loop's params."""
    entry, sample = case
    tx = sample.build()
    params = [_params(i) for i in range(T)]
    grads = [_rand_grads(i, params[0]) for i in range(T)]

    def one_step(p, g, s):
        u, s = tx.update(_form(entry, g), s, p)
        return fo.apply_updates(p, u), s

    looped = []
    for i in range(T):
        p, s = params[i], tx.init(params[i])
        for t in range(K):
            p, s = one_step(p, grads[i][t], s)
        looped.append(p)
    p, s = _stack(params), _stack([tx.init(q) for q in params])
    dims = (_dims(p), _dims(_stack(grads[0])), _dims(s))
    for t in range(K):
        p, s = torch.func.vmap(one_step, in_dims=dims, out_dims=(dims[0], dims[2]))(
            p, _stack([grads[i][t] for i in range(T)]), s)
    for i in range(T):
        _assert_close(_unstack(p, i), looped[i], VMAP_RTOL, f"problem {i}")


@pytest.mark.parametrize("case", cases("vmap_shared"), ids=case_id)
def test_vmap_over_tasks_with_shared_params_and_state(case):
    """The MAML setting: params and state unbatched (one ``init``), only the gradients
    batched over tasks; vmap gives the per-task loop's params."""
    entry, sample = case
    tx = sample.build()
    params = _params()
    state = tx.init(params)
    grads = [_rand_grads(i, params) for i in range(T)]

    def run(gseq):
        p, s = params, state
        for g in gseq:
            u, s = tx.update(_form(entry, g), s, p)
            p = fo.apply_updates(p, u)
        return p

    batched = torch.func.vmap(run)([_stack([grads[i][t] for i in range(T)]) for t in range(K)])
    for i in range(T):
        _assert_close(_unstack(batched, i), run(grads[i]), VMAP_RTOL, f"task {i}")


@pytest.mark.parametrize("case", cases("vmap_hypergrad"), ids=case_id)
def test_vmap_of_grad_per_task_hypergradients(case):
    """Per-task hypergradients d(val loss after K steps)/d(lr), vmapped over tasks
    (shared lr and initial params, per-task data), equal the per-task loop."""
    entry, sample = case
    params = _params()
    tasks = [_data(i) for i in range(T)]
    lr = torch.tensor(LR, dtype=DT)

    def val(lr, data):
        return _unrolled(entry, sample.make(lr), params, data)

    looped = torch.stack([torch.func.grad(val)(lr, d) for d in tasks])
    batched = torch.func.vmap(torch.func.grad(val), in_dims=(None, 0))(lr, _stack(tasks))
    assert torch.isfinite(looped).all()
    _assert_close(batched, looped, VMAP_RTOL, "hypergradients")


# ---------------------------------------------------------------------------------------
# 7. finite second derivatives where gradients are exactly zero
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", cases("second_order"), ids=case_id)
def test_hessian_through_steps_is_finite_at_zero_gradients(case):
    """The Hessian w.r.t. the initial params of the validation loss after K steps on a
    loss where ``b[1]``, row ``w[2]`` and a whole leaf ``u`` (unused by the loss) get
    exactly zero gradient is finite (reverse-over-reverse: jacrev of grad)."""
    entry, sample = case
    params, data = _params(), _data()
    params["u"] = torch.tensor([0.5, -1.0], dtype=DT)  # a leaf the loss does not use
    assert params["b"][1] < 0

    def f(p):
        return _unrolled(entry, sample.make(LR), p, data, loss=_zero_grad_loss)

    g0 = torch.func.grad(_zero_grad_loss)(params, data[0], data[1])
    assert g0["b"][1] == 0 and (g0["w"][2] == 0).all() and (g0["u"] == 0).all()
    hess = torch.func.jacrev(torch.func.grad(f))(params)
    blocks = [h for row in hess.values() for h in row.values()]
    bad = [(a, b) for a, row in hess.items() for b, h in row.items() if not torch.isfinite(h).all()]
    assert not bad, f"non-finite Hessian blocks {bad}"
    assert any(h.abs().sum() > 0 for h in blocks)


def _mlp_loss(p, x, y):
    h = torch.relu(x @ p["w1"] + p["b1"])
    return ((h @ p["w2"] + p["b2"] - y) ** 2).mean()


def test_relu_maml_meta_gradient_through_adam_is_finite_and_matches_fd():
    """MAML on a small ReLU MLP with a dead hidden unit (its weights get exactly zero
    gradient at every inner step): the meta-gradient through 5 ``fo.adam`` inner steps
    is finite and matches central finite differences."""
    gen = torch.Generator().manual_seed(7)
    meta = {"w1": torch.randn(3, 4, generator=gen, dtype=DT), "b1": torch.randn(4, generator=gen, dtype=DT) * 0.1,
            "w2": torch.randn(4, 1, generator=gen, dtype=DT), "b2": torch.zeros(1, dtype=DT)}
    meta["b1"][3] = -50.0  # unit 3 is dead for every input
    x, xv = torch.randn(8, 3, generator=gen, dtype=DT), torch.randn(8, 3, generator=gen, dtype=DT)
    y, yv = torch.randn(8, 1, generator=gen, dtype=DT), torch.randn(8, 1, generator=gen, dtype=DT)

    def outer(p):
        opt = fo.adam(lr=0.05)
        state = opt.init(p)
        for _ in range(5):
            u, state = opt.update(torch.func.grad(_mlp_loss)(p, x, y), state, p)
            p = fo.apply_updates(p, u)
        return _mlp_loss(p, xv, yv)

    g0 = torch.func.grad(_mlp_loss)(meta, x, y)
    assert (g0["w1"][:, 3] == 0).all() and (g0["w2"][3] == 0).all()
    meta_grad = torch.func.grad(outer)(meta)
    bad = [k for k, v in meta_grad.items() if not torch.isfinite(v).all()]
    assert not bad, f"non-finite meta-gradient at {bad}"
    for key, idx in (("w1", (0, 0)), ("w1", (2, 1)), ("b1", (2,)), ("w2", (1, 0)), ("w1", (1, 3)), ("b2", (0,))):
        plus, minus = _clone(meta), _clone(meta)
        plus[key][idx] += H
        minus[key][idx] -= H
        fd = (outer(plus) - outer(minus)) / (2 * H)
        _fd_close(meta_grad[key][idx], fd, f"d/d{key}{list(idx)}")
    assert meta_grad["w1"].abs().sum() > 0


# ---------------------------------------------------------------------------------------
# 8. torch.compile(fullgraph=True)
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", cases("compile"), ids=case_id)
def test_compiled_step_is_one_graph_and_equals_eager(case):
    """One pure update under ``torch.compile(fullgraph=True)`` (counting backend, no
    inductor): 3 steps give one graph (no recompile) and eager's results. One sample per
    entry (registry ONE_SAMPLE_PER_ENTRY)."""
    entry, sample = case
    tx = sample.build()
    params = _params()
    grads = _rand_grads(0, params)

    def step(g, s, p):
        u, s = tx.update(g, s, p)
        # an anchor op, so that a transform with no tensor op (identity) still makes one graph
        return u, s, p["w"] * 2

    torch._dynamo.reset()
    backend = CountingBackend()
    compiled = torch.compile(step, backend=backend, fullgraph=True)
    try:
        pe = pc = params
        se, sc = tx.init(params), tx.init(params)
        for t in range(K):
            g = _form(entry, grads[t])
            ue, se, _ = step(g, se, pe)
            uc, sc, _ = compiled(g, sc, pc)
            _assert_close((uc, sc), (ue, se), 1e-13, f"step {t}")
            pe, pc = fo.apply_updates(pe, ue), fo.apply_updates(pc, uc)
        assert backend.graphs == 1, f"{backend.graphs} graphs for {K} steps (recompiled)"
    finally:
        torch._dynamo.reset()


# ---------------------------------------------------------------------------------------
# 9. None gradient leaves
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", cases("none_leaves"), ids=case_id)
def test_none_gradient_leaf_passes_through(case):
    """With ``grads = {"w": g, "b": None}`` the update of ``b`` is None and the update of
    ``w`` is the one computed on the tree without ``b`` (two steps)."""
    entry, sample = case
    tx_full, tx_w = sample.build(), sample.build()
    params = _params()
    only_w = {"w": params["w"]}
    grads = _rand_grads(0, params)
    s_full, s_w = tx_full.init(params), tx_w.init(only_w)
    p_full, p_w = params, only_w
    for t in range(2):
        u_full, s_full = tx_full.update(_form(entry, {"w": grads[t]["w"], "b": None}), s_full, p_full)
        u_w, s_w = tx_w.update(_form(entry, {"w": grads[t]["w"]}), s_w, p_w)
        assert set(u_full) == {"w", "b"} and u_full["b"] is None, f"step {t}: b -> {u_full.get('b')!r}"
        _assert_close(u_full["w"], u_w["w"], 1e-15, f"step {t}: w")
        p_full, p_w = fo.apply_updates(p_full, u_full), fo.apply_updates(p_w, u_w)
        assert torch.equal(p_full["b"], params["b"])


def test_lbfgs_bf16_matches_torch():
    """lbfgs's bf16 check (its registry exception): on bf16 params the update is bf16,
    finite and bit-identical to torch.optim.LBFGS's bf16 step (new params - old params)."""
    x, y = _data()[:2]
    for kwargs in ({"lr": 0.5, "max_iter": 3, "history_size": 2},
                   {"lr": 1.0, "max_iter": 4, "history_size": 3, "line_search_fn": "strong_wolfe"}):
        params = _params(dtype=torch.bfloat16)
        opt = fo.lbfgs(**kwargs)
        value, grads = torch.func.grad_and_value(lambda p: _loss(p, x, y))(params)[::-1]
        u, _ = opt.update(grads, opt.init(params), params, value=value, value_fn=lambda p: _loss(p, x, y))
        leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
        ref = torch.optim.LBFGS([leaves["b"], leaves["w"]], **kwargs)  # the tree's leaf order

        def closure():
            ref.zero_grad()
            loss = _loss(leaves, x, y)
            loss.backward()
            return loss

        ref.step(closure)
        for k in params:
            assert u[k].dtype == torch.bfloat16 and torch.isfinite(u[k]).all()
            # lbfgs returns new - p (p + (new - p) may differ from new by one rounding)
            assert torch.equal(u[k], leaves[k].detach() - params[k]), (kwargs, k)
            assert u[k].abs().sum() > 0


def test_add_noise_none_leaf_keeps_positions():
    """add_noise's None-leaf check (its registry exception): a None leaf gets no noise and
    no update, and the other leaf gets the noise it gets when every leaf has a gradient
    (the noise stream is keyed by the leaf's position in the tree)."""
    tx = fo.add_noise(0.01, 0.55, key=3)
    params = _params()
    g = _rand_grads(0, params)[0]
    u_none, s_none = tx.update({"w": g["w"], "b": None}, tx.init(params), params)
    u_all, _ = tx.update(g, tx.init(params), params)
    assert u_none["b"] is None
    assert torch.equal(u_none["w"], u_all["w"]) and not torch.equal(u_none["w"], g["w"])
    assert int(s_none.count) == 1


# ---------------------------------------------------------------------------------------
# 10. bfloat16 params
# ---------------------------------------------------------------------------------------

BF16_RTOL, BF16_ATOL = 0.05, 0.03  # atol relative to the leaf's largest |update| over the run (float32)


@pytest.mark.parametrize("case", cases("bf16"), ids=case_id)
def test_bf16_params_run_and_track_float32(case):
    """bfloat16 params and gradients: the updates are bf16, finite and close to the
    float32 run on the same (bf16-representable) inputs over K steps. bf16 keeps 8
    significant bits (relative rounding 3.9e-3 per op); the tolerance is 5% relative plus
    3% of the largest |update| the leaf gets over the run (an update that is a small
    difference of O(1) terms, e.g. momentum against a new gradient, carries the bf16
    rounding of those terms, not of its own size)."""
    entry, sample = case
    tx16, tx32 = sample.build(), sample.build()
    p16 = _params(dtype=torch.bfloat16)
    p32 = optree.tree_map(lambda x: x.float(), p16)
    data = _data()
    grads = [optree.tree_map(lambda x: x.to(torch.bfloat16), g) for g in _rand_grads(0, p16)]
    s16, s32 = tx16.init(p16), tx32.init(p32)
    runs = []
    for t in range(K):
        if entry.extras is not None:  # value/value_fn must be consistent with the gradient
            g16 = torch.func.grad(_loss)(p16, data[0], data[1])
            g32 = optree.tree_map(lambda x: x.float(), g16)
        else:
            g16, g32 = grads[t], optree.tree_map(lambda x: x.float(), grads[t])
        u16, s16 = tx16.update(_form(entry, g16), s16, p16, **_extras(entry, p16, data))
        u32, s32 = tx32.update(_form(entry, g32), s32, p32, **_extras(entry, p32, data))
        for key in p16:
            assert u16[key].dtype == torch.bfloat16, f"step {t}: {key} update is {u16[key].dtype}"
            assert torch.isfinite(u16[key]).all(), f"step {t}: {key} update {u16[key]}"
        runs.append((u16, u32, p32))
        p16, p32 = fo.apply_updates(p16, u16), fo.apply_updates(p32, u32)
        assert all(v.dtype == torch.bfloat16 for v in p16.values())
    for key in p16:
        scale = max(u32[key].abs().max().item() for _, u32, _ in runs)
        for t, (u16, u32, p_before) in enumerate(runs):
            atol = BF16_ATOL * scale + 1e-6
            if entry.bf16_update_from_params:  # one bf16 ulp of the param (see the registry)
                atol += p_before[key].abs().max().item() * 2.0 ** -8
            torch.testing.assert_close(u16[key].float(), u32[key], rtol=BF16_RTOL, atol=atol,
                                       msg=lambda m: f"step {t}, {key}: {m}")
