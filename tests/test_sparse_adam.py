"""fo.sparse_adam against torch.optim.SparseAdam (float64, sparse COO gradients)."""

from __future__ import annotations

import pytest
import torch

import functional_optim as fo

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


def run_functional(tx, params, grads, donate=False):
    state = tx.init(params)
    out = []
    for g in grads:
        g = {k: None if v is None else v.clone() for k, v in g.items()}
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


def test_not_compilable_fullgraph_documented():
    """Documented limitation: dynamo refuses sparse tensors (torch 2.13)."""
    params = {"emb": torch.zeros(5, 2, dtype=F64)}
    tx = fo.sparse_adam()
    grad = {"emb": torch.sparse_coo_tensor([[1]], torch.ones(1, 2, dtype=F64), (5, 2), check_invariants=True)}
    with pytest.raises(Exception, match="sparse"):
        torch.compile(tx.update, fullgraph=True)(grad, tx.init(params), params)
