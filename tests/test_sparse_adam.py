"""fo.sparse_adam against torch.optim.SparseAdam (float64, sparse COO and SparseRows gradients)."""

from __future__ import annotations

import pytest
import torch

import functional_optim as fo
from functional_optim.transforms.sparse import SparseRows
from compile_counting import CountingBackend

F64 = torch.float64
STEPS = 60
NEVER = 3  # the last NEVER rows of each table never appear in a gradient


def make_params(dtype=F64):
    gen = torch.Generator().manual_seed(0)
    return {"emb": torch.randn(20, 3, generator=gen, dtype=dtype),
            "other": torch.randn(9, 4, generator=gen, dtype=dtype)}


def embedding_grad(table: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The gradient nn.Embedding(sparse=True) produces: uncoalesced, repeated rows."""
    emb = torch.nn.Embedding(*table.shape, sparse=True, dtype=table.dtype)
    with torch.no_grad():
        emb.weight.copy_(table)
    idx = torch.randint(0, table.shape[0] - NEVER, (int(torch.randint(1, 10, (1,), generator=gen)),),
                        generator=gen)
    weights = torch.randn(idx.shape[0], table.shape[1], generator=gen, dtype=table.dtype)
    (emb(idx) * weights).sum().backward()
    return emb.weight.grad


def random_grad(table: torch.Tensor, gen: torch.Generator, step: int) -> torch.Tensor | None:
    """A synthetic sparse grad: sometimes None, sometimes empty, with duplicate indices."""
    if step % 7 == 3:
        return None  # no gradient: torch skips the param (no step increment)
    n = 0 if step % 5 == 4 else int(torch.randint(1, 12, (1,), generator=gen))  # empty grads too
    idx = torch.randint(0, table.shape[0] - NEVER, (1, n), generator=gen)
    values = torch.randn(n, table.shape[1], generator=gen, dtype=table.dtype)
    return torch.sparse_coo_tensor(idx, values, table.shape, check_invariants=True)


def make_grads(params, steps=STEPS, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [{"emb": embedding_grad(params["emb"], gen), "other": random_grad(params["other"], gen, s)}
            for s in range(steps)]


def run_torch(params, grads, kwargs):
    leaves = {k: params[k].clone().requires_grad_(True) for k in sorted(params)}
    opt = torch.optim.SparseAdam(list(leaves.values()), **kwargs)
    out = []
    for g in grads:
        for k, leaf in leaves.items():
            leaf.grad = None if g[k] is None else g[k].clone()
        opt.step()
        out.append({k: v.detach().clone() for k, v in leaves.items()})
    return out, {k: opt.state[v] for k, v in leaves.items()}


def clone(g):
    """A copy of a gradient leaf (a tensor or a SparseRows)."""
    return SparseRows(g.indices.clone(), g.values.clone()) if isinstance(g, SparseRows) else g.clone()


def run_functional(tx, params, grads, donate=False):
    state = tx.init(params)
    out = []
    for g in grads:
        g = {k: None if v is None else clone(v) for k, v in g.items()}
        updates, state = tx.update(g, state, params, donate=donate)
        params = fo.apply_updates(params, updates)
        out.append(params)
    return out, state


def max_rel(ours, ref):
    return max(((a[k] - b[k]).abs().max() / b[k].abs().max()).item()
               for a, b in zip(ours, ref, strict=True) for k in b)


CASES = [dict(), dict(maximize=True), dict(lr=torch.tensor(0.01, dtype=F64), betas=(0.5, 0.9), eps=1e-3),
         dict(lr=0.05, betas=(0.0, 0.99), maximize=True)]


@pytest.mark.parametrize("kwargs", CASES, ids=[str(c) for c in CASES])
def test_parity_with_torch(kwargs):
    params = make_params()
    grads = make_grads(params)
    ref, ref_state = run_torch(params, grads, kwargs)
    ours, state = run_functional(fo.sparse_adam(**kwargs), params, grads)
    assert max_rel(ours, ref) <= 1e-10
    inner = fo.tree.get(state, "count")  # torch's per-param `step` (None grads skipped)
    for k in params:
        assert int(inner[k]) == ref_state[k]["step"]
        for ours_key, torch_key in (("mu", "exp_avg"), ("nu", "exp_avg_sq")):
            ref_t = ref_state[k][torch_key]
            diff = (fo.tree.get(state, ours_key)[k] - ref_t).abs().max() / ref_t.abs().max()
            assert diff <= 1e-10


def test_rows_never_present_stay_untouched():
    params = make_params()
    grads = make_grads(params, steps=20)
    ours, state = run_functional(fo.sparse_adam(lr=0.1), params, grads)
    for k in params:
        assert torch.equal(ours[-1][k][-NEVER:], params[k][-NEVER:])
        assert bool((fo.tree.get(state, "mu")[k][-NEVER:] == 0).all())
        assert bool((fo.tree.get(state, "nu")[k][-NEVER:] == 0).all())
        assert not torch.equal(ours[-1][k][:-NEVER], params[k][:-NEVER])


def test_updates_are_sparse_and_coalesced():
    params = make_params()
    tx = fo.sparse_adam()
    grad = torch.sparse_coo_tensor([[4, 1, 4]], torch.ones(3, 3, dtype=F64), (20, 3), check_invariants=True)
    updates, _ = tx.update({"emb": grad, "other": None}, tx.init(params), params)
    assert updates["emb"].is_sparse and updates["emb"].is_coalesced()
    assert updates["emb"]._indices().tolist() == [[1, 4]]
    assert updates["other"] is None


def test_float32_close_to_torch():
    params = make_params(torch.float32)
    grads = make_grads(params, steps=20)
    ref, _ = run_torch(params, grads, {})
    ours, _ = run_functional(fo.sparse_adam(), params, grads)
    assert max_rel(ours, ref) <= 1e-6
    assert ours[-1]["emb"].dtype == torch.float32


def test_pure_repeatable_and_donation():
    params = make_params()
    grads = make_grads(params, steps=6)
    tx = fo.sparse_adam(lr=0.1)
    state = tx.init(params)
    for g in grads[:3]:
        _, state = tx.update(g, state, params)
    g = grads[3]
    snapshot = [t.clone() for t in fo.tree.leaves((state, params))]
    dense_g = {k: None if v is None else v.to_dense() for k, v in g.items()}
    u1, s1 = tx.update(g, state, params)
    u2, s2 = tx.update(g, state, params)
    for before, after in zip(snapshot, fo.tree.leaves((state, params))):
        assert torch.equal(before, after)
    assert all(torch.equal(v.to_dense(), dense_g[k]) for k, v in g.items() if v is not None)
    for a, b in zip(fo.tree.leaves((u1, s1)), fo.tree.leaves((u2, s2))):
        assert torch.equal(a.to_dense() if a.is_sparse else a, b.to_dense() if b.is_sparse else b)
    pure, _ = run_functional(tx, params, grads)
    donated, _ = run_functional(tx, params, grads, donate=True)
    assert max_rel(donated, pure) == 0.0


def test_dense_gradient_raises_torchs_error():
    params = make_params()
    tx = fo.sparse_adam()
    with pytest.raises(RuntimeError, match="SparseAdam does not support dense gradients"):
        tx.update({"emb": torch.ones(20, 3, dtype=F64), "other": None}, tx.init(params), params)
    leaf = torch.zeros(2, requires_grad=True)
    leaf.grad = torch.ones(2)
    with pytest.raises(RuntimeError, match="SparseAdam does not support dense gradients"):
        torch.optim.SparseAdam([leaf]).step()


def test_complex_and_sparse_params_raise_valueerror():
    with pytest.raises(ValueError, match="Complex params.*does not support complex"):
        fo.sparse_adam().init({"z": torch.zeros(3, dtype=torch.complex128)})
    with pytest.raises(ValueError, match="Complex params"):
        torch.optim.SparseAdam([torch.zeros(3, dtype=torch.complex128, requires_grad=True)])
    sparse = torch.sparse_coo_tensor([[0]], torch.ones(1), (3,), check_invariants=True)
    with pytest.raises(ValueError, match="Sparse params"):
        fo.sparse_adam().init({"s": sparse})


@pytest.mark.parametrize("kwargs,match", [
    (dict(lr=0.0), "learning rate"), (dict(lr=-1e-3), "learning rate"),
    (dict(lr=torch.tensor([1e-3, 1e-3])), "lr"),
    (dict(eps=0.0), "epsilon"), (dict(betas=(1.0, 0.999)), "index 0"),
    (dict(betas=(0.9, -0.1)), "index 1"),
])
def test_invalid_hyperparameters_raise_valueerror_like_torch(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fo.sparse_adam(**kwargs)
    with pytest.raises(ValueError):
        torch.optim.SparseAdam([torch.zeros(1, requires_grad=True)], **kwargs)


def test_maximize_must_be_bool():
    with pytest.raises(TypeError, match="maximize"):
        fo.sparse_adam(maximize=1)


def test_coo_gradients_are_not_compilable_as_documented():
    """Why SparseRows exists: dynamo refuses sparse COO tensors (torch 2.13). If this starts
    failing, torch traces sparse tensors now: update the docstrings of sparse_adam."""
    params = {"emb": torch.zeros(5, 2, dtype=F64)}
    tx = fo.sparse_adam()
    grad = {"emb": torch.sparse_coo_tensor([[1]], torch.ones(1, 2, dtype=F64), (5, 2), check_invariants=True)}
    with pytest.raises(Exception, match="sparse"):
        torch.compile(tx.update, fullgraph=True)(grad, tx.init(params), params)


# ---------------------------------------------------------------------------------
# SparseRows: the compilable gradient form (indices, values) of dense tensors


def as_rows(grads, keys=("emb", "other")):
    """The same gradients with the leaves ``keys`` as SparseRows (uncoalesced, repeats kept)."""
    return [{k: SparseRows.from_coo(v) if k in keys and v is not None else v for k, v in g.items()}
            for g in grads]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int64) if t.dtype == F64 else t.view(torch.int32)


@pytest.mark.parametrize("kwargs", CASES, ids=[str(c) for c in CASES])
@pytest.mark.parametrize("keys", [("emb", "other"), ("emb",)], ids=["all_rows", "rows_and_coo"])
def test_sparse_rows_parity_with_torch(kwargs, keys):
    params = make_params()
    grads = make_grads(params)
    assert any(len(set(g["emb"]._indices()[0].tolist())) < g["emb"]._nnz() for g in grads)  # repeats
    ref, ref_state = run_torch(params, grads, kwargs)
    ours, state = run_functional(fo.sparse_adam(**kwargs), params, as_rows(grads, keys))
    assert max_rel(ours, ref) <= 1e-10
    inner = fo.tree.get(state, "count")
    for k in params:
        assert int(inner[k]) == ref_state[k]["step"]
        for ours_key, torch_key in (("mu", "exp_avg"), ("nu", "exp_avg_sq")):
            ref_t = ref_state[k][torch_key]
            assert (fo.tree.get(state, ours_key)[k] - ref_t).abs().max() / ref_t.abs().max() <= 1e-10


@pytest.mark.parametrize("maximize", [False, True])
def test_sparse_rows_untouched_rows_bit_identical_every_step(maximize):
    params = make_params()
    grads = make_grads(params, steps=25)
    tx = fo.sparse_adam(lr=0.1, maximize=maximize)
    state = tx.init(params)
    for g in as_rows(grads):
        updates, new_state = tx.update(g, state, params)
        new_params = fo.apply_updates(params, updates)
        for k in params:
            seen = torch.zeros(params[k].shape[0], dtype=torch.bool)
            if g[k] is not None:
                seen[g[k].indices] = True
                assert updates[k].shape == params[k].shape  # a dense update
            for tree_new, tree_old in ((new_params, params),
                                       (fo.tree.get(new_state, "mu"), fo.tree.get(state, "mu")),
                                       (fo.tree.get(new_state, "nu"), fo.tree.get(state, "nu"))):
                assert torch.equal(bits(tree_new[k][~seen]), bits(tree_old[k][~seen]))
            if g[k] is not None and g[k].indices.numel():
                assert not torch.equal(new_params[k][seen], params[k][seen])
        params, state = new_params, new_state
    for k in params:  # never-seen rows: state still exactly zero
        for name in ("mu", "nu"):
            assert bool((fo.tree.get(state, name)[k][-NEVER:] == 0).all())


def test_sparse_rows_float32_close_to_torch():
    params = make_params(torch.float32)
    grads = make_grads(params, steps=20)
    ref, _ = run_torch(params, grads, {})
    ours, _ = run_functional(fo.sparse_adam(), params, as_rows(grads))
    assert max_rel(ours, ref) <= 1e-6
    assert ours[-1]["emb"].dtype == torch.float32


def test_sparse_rows_pure_repeatable_and_donation():
    params = make_params()
    grads = as_rows(make_grads(params, steps=8))
    tx = fo.sparse_adam(lr=0.1, maximize=True)
    state = tx.init(params)
    for g in grads[:3]:
        _, state = tx.update(g, state, params)
    g = grads[3]
    snapshot = [t.clone() for t in fo.tree.leaves((state, params, g))]
    u1, s1 = tx.update(g, state, params)
    u2, s2 = tx.update(g, state, params)
    for before, after in zip(snapshot, fo.tree.leaves((state, params, g)), strict=True):
        assert torch.equal(before, after)
    for a, b in zip(fo.tree.leaves((u1, s1)), fo.tree.leaves((u2, s2)), strict=True):
        assert torch.equal(a, b)
    pure, pure_state = run_functional(tx, params, grads)
    donated, donated_state = run_functional(tx, params, grads, donate=True)  # on clones
    assert max_rel(donated, pure) == 0.0
    for a, b in zip(fo.tree.leaves(pure_state), fo.tree.leaves(donated_state), strict=True):
        assert torch.equal(a, b)


def test_sparse_rows_from_coo_and_to_coo():
    gen = torch.Generator().manual_seed(3)
    grad = embedding_grad(torch.randn(8, 3, dtype=F64), gen)
    assert not grad.is_coalesced()
    rows = SparseRows.from_coo(grad)
    assert rows.indices.dtype == torch.int64 and rows.indices.dim() == 1
    assert rows.values.shape == (grad._nnz(), 3)
    assert rows.indices.data_ptr() == grad._indices().data_ptr()  # views: nothing copied
    assert torch.equal(rows.to_coo(8).to_dense(), grad.to_dense())
    dense = torch.zeros(8, 3, dtype=F64).index_add_(0, rows.indices, rows.values)
    assert torch.equal(dense, grad.to_dense())
    with pytest.raises(TypeError, match="grad must be a sparse COO"):
        SparseRows.from_coo(torch.ones(2, 2))
    with pytest.raises(ValueError, match="grad must have one sparse dimension"):
        SparseRows.from_coo(torch.eye(3).to_sparse())


def test_sparse_rows_bad_shapes_and_dtypes_name_updates():
    params = {"emb": torch.zeros(5, 3, dtype=F64)}
    tx = fo.sparse_adam()
    state = tx.init(params)
    bad = [(SparseRows(torch.tensor([0, 1]), torch.ones(2, 4, dtype=F64)), ValueError, "values must have shape"),
           (SparseRows(torch.tensor([0, 1]), torch.ones(3, 3, dtype=F64)), ValueError, "values must have shape"),
           (SparseRows(torch.tensor([0, 1], dtype=torch.int32), torch.ones(2, 3, dtype=F64)), TypeError, "int64"),
           (SparseRows(torch.tensor([[0, 1]]), torch.ones(2, 3, dtype=F64)), TypeError, "1-D"),
           (SparseRows(torch.tensor([0, 1]), torch.ones(2, 3)), TypeError, "dtype")]
    for rows, error, match in bad:
        with pytest.raises(error, match=f"updates.*{match}"):
            tx.update({"emb": rows}, state, params)
    with pytest.raises(ValueError, match="does not match the structure"):
        tx.update({"emb": SparseRows(torch.tensor([0]), torch.ones(1, 3, dtype=F64)), "x": None}, state, params)


def test_sparse_rows_grad_wrt_lr_matches_finite_differences():
    """torch.func.grad through three SparseRows steps (meta-learning a learning rate)."""
    gen = torch.Generator().manual_seed(4)
    table = torch.randn(6, 2, generator=gen, dtype=F64)
    idxs = [torch.randint(0, 4, (3,), generator=gen) for _ in range(3)]

    def loss(lr):
        opt = fo.sparse_adam(lr=lr)
        p = {"emb": table}
        s = opt.init(p)
        for idx in idxs:  # the gradient of sum(emb[idx] ** 2), repeated rows included
            u, s = opt.update({"emb": SparseRows(idx, 2 * p["emb"][idx])}, s, p)
            p = fo.apply_updates(p, u)
        return (p["emb"] ** 2).sum()

    lr, h = torch.tensor(0.1, dtype=F64), 1e-6
    fd = (loss(lr + h) - loss(lr - h)) / (2 * h)
    assert abs(float(torch.func.grad(loss)(lr)) - float(fd)) <= 1e-6 * abs(float(fd))


def _compiled_vs_eager(backend, maximize):
    torch._dynamo.reset()
    lr = torch.tensor(0.05, dtype=F64)
    opt = fo.sparse_adam(lr=lr, maximize=maximize)
    gen = torch.Generator().manual_seed(5)
    params = {"emb": torch.randn(12, 3, generator=gen, dtype=F64), "bias": torch.randn(3, generator=gen, dtype=F64)}

    def step(grads, state, params):
        updates, state = opt.update(grads, state, params)
        return fo.apply_updates(params, updates), state

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    params_c = params_e = params
    state_c = state_e = opt.init(params)
    for i in range(20):
        lr.fill_(0.05 * (1 - i / 40))  # changed in place: no recompile
        idx = torch.randint(0, 12 - NEVER, (6,), generator=gen)  # fixed nnz, repeats
        grads = {"emb": SparseRows(idx, torch.randn(6, 3, generator=gen, dtype=F64)), "bias": None}
        params_c, state_c = compiled(grads, state_c, params_c)
        params_e, state_e = step(grads, state_e, params_e)
    assert torch.equal(params_c["emb"][-NEVER:], params["emb"][-NEVER:])
    assert torch.equal(params_c["bias"], params["bias"])
    return (params_c, state_c), (params_e, state_e)


def test_sparse_rows_compiles_fullgraph_without_recompiles():
    counter = CountingBackend()
    compiled, eager = _compiled_vs_eager(counter, maximize=True)
    assert counter.graphs == 1  # one graph, no graph break (fullgraph), no recompile in 20 steps
    for a, b in zip(fo.tree.leaves(compiled), fo.tree.leaves(eager), strict=True):
        assert torch.equal(a, b)


def test_sparse_rows_compiles_with_inductor_equal_to_eager():
    from torch._dynamo.utils import counters
    counters.clear()
    compiled, eager = _compiled_vs_eager("inductor", maximize=False)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    for a, b in zip(fo.tree.leaves(compiled), fo.tree.leaves(eager), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
