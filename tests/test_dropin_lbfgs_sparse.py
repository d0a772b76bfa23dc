"""Drop-in LBFGS (closure API) and SparseAdam (sparse grads) against torch.optim:
trajectories and state_dict cross-loading in both directions."""

from __future__ import annotations

import io

import pytest
import torch

import adapters

TOL = 1e-10  # relative, float64


def _roundtrip(state_dict: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _logistic_problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 5, generator=gen, dtype=torch.float64)
    y = (x @ torch.randn(5, generator=gen, dtype=torch.float64) > 0).to(torch.float64)
    w0 = torch.randn(5, generator=gen, dtype=torch.float64) * 0.1
    b0 = torch.zeros((), dtype=torch.float64)

    def loss_fn(w, b):
        return torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + 1e-3 * w.square().sum()

    return [w0, b0], loss_fn


def _rosenbrock_problem():
    def loss_fn(xy):
        return (1 - xy[0]) ** 2 + 100 * (xy[1] - xy[0] ** 2) ** 2

    return [torch.tensor([-1.2, 1.0], dtype=torch.float64)], loss_fn


def _closure(opt, params, loss_fn):
    def closure():
        opt.zero_grad()
        loss = loss_fn(*params)
        loss.backward()
        return loss
    return closure


def _steps(opt, params, loss_fn, n):
    return [float(opt.step(_closure(opt, params, loss_fn))) for _ in range(n)]


def _rel(a, b):
    return max(((x - y).abs().max() / y.abs().max().clamp_min(1e-300)).item() for x, y in zip(a, b))


PROBLEMS = {"logistic": _logistic_problem, "rosenbrock": _rosenbrock_problem}
LBFGS_CASES = [
    ("logistic", dict()),
    ("logistic", dict(line_search_fn="strong_wolfe", history_size=3)),
    ("rosenbrock", dict(line_search_fn="strong_wolfe")),
    ("rosenbrock", dict(line_search_fn="strong_wolfe", max_iter=5, history_size=4)),
]


@pytest.mark.parametrize("problem,kwargs", LBFGS_CASES, ids=[f"{p}-{i}" for i, (p, _) in enumerate(LBFGS_CASES)])
def test_lbfgs_matches_torch_and_cross_loads(problem, kwargs):
    init, loss_fn = PROBLEMS[problem]()
    ours_p = [torch.nn.Parameter(t.clone()) for t in init]
    ref_p = [torch.nn.Parameter(t.clone()) for t in init]
    ours, ref = adapters.LBFGS(ours_p, **kwargs), torch.optim.LBFGS(ref_p, **kwargs)
    ours_losses = _steps(ours, ours_p, loss_fn, 6)
    ref_losses = _steps(ref, ref_p, loss_fn, 6)
    assert max(abs(a - b) / abs(b) for a, b in zip(ours_losses, ref_losses)) <= TOL
    assert _rel(ours_p, ref_p) <= TOL

    to_torch_p = [torch.nn.Parameter(p.detach().clone()) for p in ours_p]
    to_torch = torch.optim.LBFGS(to_torch_p, **kwargs)
    to_torch.load_state_dict(_roundtrip(ours.state_dict()))
    to_ours_p = [torch.nn.Parameter(p.detach().clone()) for p in ref_p]
    to_ours = adapters.LBFGS(to_ours_p, **kwargs)
    to_ours.load_state_dict(_roundtrip(ref.state_dict()))
    results = [_steps(opt, params, loss_fn, 4) for opt, params in
               ((ref, ref_p), (to_torch, to_torch_p), (to_ours, to_ours_p))]
    for losses in results[1:]:
        # near the minimum losses approach 0: relative to max(|loss|, 1e-3)
        assert max(abs(a - b) / max(abs(b), 1e-3) for a, b in zip(losses, results[0])) <= TOL
    assert _rel(to_torch_p, ref_p) <= TOL
    assert _rel(to_ours_p, ref_p) <= TOL


def test_lbfgs_requires_closure_and_one_group():
    w = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="parameter groups"):
        adapters.LBFGS([{"params": [w]}, {"params": [torch.nn.Parameter(torch.ones(1))]}])
    with pytest.raises(TypeError, match="closure"):
        adapters.LBFGS([w]).step(None)


def _sparse_grads(steps: int, rows: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        idx = torch.randint(0, rows - 2, (5,), generator=gen)  # the last two rows never appear
        out.append(idx)
    return out


def test_sparse_adam_matches_torch_and_cross_loads():
    rows = 10
    gen = torch.Generator().manual_seed(0)
    init = torch.randn(rows, 3, generator=gen, dtype=torch.float64)
    embs = [torch.nn.Embedding(rows, 3, sparse=True, dtype=torch.float64) for _ in range(4)]
    for e in embs:
        with torch.no_grad():
            e.weight.copy_(init)
    kwargs = dict(lr=0.05, betas=(0.8, 0.95), maximize=True)
    ours, ref = adapters.SparseAdam(embs[0].parameters(), **kwargs), torch.optim.SparseAdam(embs[1].parameters(), **kwargs)
    batches = _sparse_grads(30, rows)

    def run(opt, emb, idx_list):
        for idx in idx_list:
            opt.zero_grad()
            (emb(idx) ** 2).sum().backward()
            opt.step()

    run(ours, embs[0], batches[:20])
    run(ref, embs[1], batches[:20])
    assert _rel([embs[0].weight], [embs[1].weight]) <= TOL
    assert torch.equal(embs[0].weight[-2:], init[-2:])  # rows never present are untouched

    with torch.no_grad():
        embs[2].weight.copy_(embs[0].weight)
        embs[3].weight.copy_(embs[1].weight)
    to_torch = torch.optim.SparseAdam(embs[2].parameters(), **kwargs)
    to_torch.load_state_dict(_roundtrip(ours.state_dict()))
    to_ours = adapters.SparseAdam(embs[3].parameters(), **kwargs)
    to_ours.load_state_dict(_roundtrip(ref.state_dict()))
    for opt, emb in ((ref, embs[1]), (to_torch, embs[2]), (to_ours, embs[3])):
        run(opt, emb, batches[20:])
    assert _rel([embs[2].weight], [embs[1].weight]) <= TOL
    assert _rel([embs[3].weight], [embs[1].weight]) <= TOL


def test_sparse_adam_rejects_dense_grads_as_torch():
    w = torch.nn.Parameter(torch.ones(3, 2))
    opt = adapters.SparseAdam([w])
    w.grad = torch.ones(3, 2)
    with pytest.raises(RuntimeError, match="dense"):
        opt.step()
