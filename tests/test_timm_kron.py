"""timm's Kron (PSGD): ``fo.timm.kron`` (= ``fo.kron``, built on
``functional_optim.transforms.scale_by_kron``) and ``adapters.timm.Kron`` against timm
1.0.31, step by step.

The reference ``tests/reference/timm_kron.pt`` was recorded from real timm (eager, its
``torch.compile`` of the helpers switched off) by ``tests/reference/generate_timm_kron.py``:
float64 params (a scalar, a bias, a 3x5 matrix, a 2x3x2x2 conv weight, a 2x9 matrix whose
9-long dim exceeds ``max_size_triangular=8``), fixed gradients, the global torch seed set
before the first step (timm's probes come from it unless ``deterministic``).

Tolerance: 1e-12 relative (``|ours - timm| / max(|timm|, 1e-3)`` per element), float64.
timm's triangular solves run in float32; ours call the same solve on the same float32
inputs, so the float32 rounding is the same and the trajectories agree to float64
rounding. Measured worst: 1.7e-15 (``all_diag_min_ndim3``; the adapter's runs equal the
functional ones bit for bit); steps 501-620 replayed from timm's state after step 500:
7.6e-16 (the whole 620 steps from scratch, not run here for time: 5.6e-15). The
float32-state case (``mu_dtype``/``precond_dtype`` float32) is held to the same tolerance
(measured 5.5e-16).

The ops are tiny (3x3 matrices): the module runs them on one intra-op thread (restored
after), since with two threads on two busy cores every parallel region costs milliseconds.
"""

from __future__ import annotations

import inspect
import os
import pickle
import random

import pytest
import torch

import functional_optim as fo
from adapters.timm import Kron, create_optimizer_v2, get_optimizer_class, get_optimizer_info
from functional_optim.transforms.kron import ScaleByKronState, precond_update_prob_schedule, python_rng_words
from functional_optim.transforms.kron_preconditioner import diagonal_dims, init_factors, kron_expressions

HERE = os.path.dirname(os.path.abspath(__file__))
REF = torch.load(os.path.join(HERE, "reference", "timm_kron.pt"), weights_only=True)
SHAPES = [tuple(s) for s in REF["shapes"].values()]
TOL = 1e-12
SHORT_CASES = [name for name, case in REF["cases"].items() if "resume" not in case]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def unflat(vec: torch.Tensor) -> list[torch.Tensor]:
    out, i = [], 0
    for s in SHAPES:
        n = int(torch.Size(s).numel())
        out.append(vec[i:i + n].reshape(s).clone())
        i += n
    return out


def rel(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.double() - expected.double()).abs() / expected.double().abs().clamp(min=1e-3)).max().item()


def flat(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


def assert_state_equals_timm(state: ScaleByKronState, timm_state: dict) -> None:
    """Our functional state against timm's state_dict (per param and the Python generator)."""
    for i, entry in timm_state["state"].items():
        assert int(state.count[i]) == entry["step"]
        assert int(state.update_counter[i]) == entry["update_counter"]
        assert state.mu[i].dtype == entry["momentum_buffer"].dtype
        assert rel(state.mu[i], entry["momentum_buffer"]) <= TOL
        ours = [q[i] for q in state.q if q[i] is not None]
        assert [q.shape for q in ours] == [q.shape for q in entry["Q"]]
        for q, theirs in zip(ours, entry["Q"]):
            assert q.dtype == theirs.dtype
            assert rel(q, theirs) <= TOL
    assert torch.equal(state.rng, python_rng_words(timm_state["rng_state"]))


def functional_run(case: dict, state=None, start: int = 0):
    """``fo.timm.kron`` over the case's steps from ``start`` (timm's init, or ``state``);
    returns the worst relative difference of the params, the final state and the
    number of steps that updated the preconditioner of the bias."""
    kwargs = dict(case["kwargs"])
    params = unflat(case["traj"][start - 1]) if start else [t.clone() for t in REF["init"].values()]
    tx = fo.timm.kron(**kwargs)
    if state is None:
        state = tx.init(params)
        if state.torch_rng is not None:  # timm drew from the global generator seeded here
            state = state._replace(torch_rng=torch.Generator().manual_seed(REF["seed"]).get_state())
    worst, precond_updates = 0.0, 0
    for t in range(start, case["steps"]):
        if t in case["lr_at"]:
            tx = fo.timm.kron(**{**kwargs, "lr": case["lr_at"][t], "max_lr_snapshot": kwargs["lr"]})
        updates, state = tx.update(unflat(REF["grads"][t]), state, params)
        params = fo.apply_updates(params, updates)
        worst = max(worst, rel(flat(params), case["traj"][t]))
        precond_updates += int(state.update_counter[1]) == 0
    return worst, state, precond_updates


# -- the pieces -------------------------------------------------------------------------------

def test_update_probability_schedule_equals_timm():
    got = torch.stack([precond_update_prob_schedule(n) for n in REF["schedule"]["n"]])
    assert torch.equal(got, REF["schedule"]["prob"])
    assert got.dtype == torch.float32 and got[0] == 1.0 and got[-1] == pytest.approx(0.03)


def test_factor_layout_and_einsum_subscripts_equal_timm():
    assert len(REF["exprs"]) == 9 * 4 * 3
    for e in REF["exprs"]:
        diag = diagonal_dims(e["shape"], e["max_size"], e["min_ndim"], e["mode"])
        expr = kron_expressions(diag)
        assert (expr.exprA, list(expr.exprGs), expr.exprP) == (e["exprA"], e["exprGs"], e["exprP"]), e
        factors = init_factors(e["shape"], diag, 2.0, torch.float64)
        assert len(factors) == len(e["Q"])
        for q, theirs in zip(factors, e["Q"]):
            assert q.shape == theirs.shape and torch.equal(q, theirs), e


def test_layout_errors_name_the_argument():
    with pytest.raises(ValueError, match="memory_save_mode"):
        fo.timm.kron(memory_save_mode="some_diag")
    with pytest.raises(ValueError, match="momentum must be in"):
        fo.timm.kron(momentum=1.0)
    with pytest.raises(ValueError, match="preconditioner_update_probability"):
        fo.timm.kron(preconditioner_update_probability=0.0)
    with pytest.raises(TypeError, match="mu_dtype"):
        fo.timm.kron(mu_dtype=torch.int32)
    with pytest.raises(ValueError, match="Einstein runs out of letters"):
        kron_expressions((False,) * 14)


# -- fo.timm.kron -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SHORT_CASES)
def test_functional_trajectory_equals_timm(name):
    case = REF["cases"][name]
    worst, state, _ = functional_run(case)
    assert worst <= TOL, f"{worst:.3g}"
    assert_state_equals_timm(state, case["final"])


def _state_from_timm(tx: fo.GradientTransformation, params: list, saved: dict) -> ScaleByKronState:
    state = tx.init(params)
    entries = [saved["state"][i] for i in range(len(params))]
    q = tuple([e["Q"][d] if d < len(e["Q"]) else None for e in entries] for d in range(len(state.q)))
    return ScaleByKronState(
        count=[torch.tensor(e["step"], dtype=torch.int32) for e in entries],
        update_counter=[torch.tensor(e["update_counter"], dtype=torch.int32) for e in entries],
        mu=[e["momentum_buffer"] for e in entries], q=q, rng=python_rng_words(saved["rng_state"]),
        torch_rng=saved["torch_rng"])


def test_functional_annealed_steps_equal_timm():
    """Steps 501-620 of timm's default schedule (probability 1 to 0.89: the update counter
    and the Python generator's balance draws decide), from timm's state after step 500."""
    case = REF["cases"]["long"]
    resume = case["resume"]
    start = resume["state"][0]["step"]
    assert start == 500 and case["steps"] == 620
    tx = fo.timm.kron(**case["kwargs"])
    state = _state_from_timm(tx, unflat(case["traj"][start - 1]), resume)
    worst, state, precond_updates = functional_run(case, state, start)
    assert worst <= TOL, f"{worst:.3g}"
    assert_state_equals_timm(state, case["final"])
    # from step 502 the probability is below 1, 1/p in (1, 2): the counter must reach 2, so the
    # preconditioner updates on every other step (501, 503, ..., 619)
    assert precond_updates == 60


def test_update_is_pure():
    case = REF["cases"]["kronw_stochastic_deterministic"]
    tx = fo.timm.kron(**case["kwargs"])
    params = [t.clone() for t in REF["init"].values()]
    grads = unflat(REF["grads"][0])
    state = tx.init(params)
    for _ in range(2):  # a second step: the factors are then no longer the identity
        _, state = tx.update(grads, state, params)
    before = [t.clone() for t in fo.tree.leaves(state)]
    first = tx.update(grads, state, params)
    second = tx.update(grads, state, params)
    for a, b in zip(fo.tree.leaves(first), fo.tree.leaves(second)):
        assert torch.equal(a, b)
    for a, b in zip(before, fo.tree.leaves(state)):
        assert torch.equal(a, b)  # the state (generators included) was not written
    assert not torch.equal(first[1].rng, state.rng)  # the draws advanced the generator


# -- adapters.timm.Kron ---------------------------------------------------------------------------

def adapter_run(case: dict, opt_params=None, opt=None, start: int = 0) -> tuple[float, Kron, list]:
    params = opt_params or [torch.nn.Parameter(t.clone()) for t in REF["init"].values()]
    if opt is None:
        opt = Kron(params, **case["kwargs"])
        torch.manual_seed(REF["seed"])
    worst = 0.0
    for t in range(start, case["steps"]):
        if t in case["lr_at"]:
            opt.param_groups[0]["lr"] = case["lr_at"][t]
        for p, g in zip(params, unflat(REF["grads"][t])):
            p.grad = g
        opt.step()
        worst = max(worst, rel(flat(params), case["traj"][t]))
    return worst, opt, params


def assert_state_dict_equals_timm(sd: dict, theirs: dict) -> None:
    assert sd["rng_state"] == theirs["rng_state"]
    assert sd["param_groups"] == theirs["param_groups"]
    assert set(sd["state"]) == set(theirs["state"])
    for i, entry in theirs["state"].items():
        mine = sd["state"][i]
        assert list(mine) == list(entry)  # timm's keys, in timm's order
        assert (mine["step"], mine["update_counter"]) == (entry["step"], entry["update_counter"])
        assert type(mine["step"]) is int and type(mine["update_counter"]) is int
        assert rel(mine["momentum_buffer"], entry["momentum_buffer"]) <= TOL
        assert isinstance(mine["Q"], list) and len(mine["Q"]) == len(entry["Q"])
        for q, t in zip(mine["Q"], entry["Q"]):
            assert q.dtype == t.dtype and q.shape == t.shape and rel(q, t) <= TOL


@pytest.mark.parametrize("name", ["kronc_lr_change", "one_diag_flatten_grad_fit", "smart_one_diag_float32_state"])
def test_adapter_trajectory_and_state_dict_equal_timm(name):
    """Probes from torch's global generator (timm's default) or seeded by the Python one."""
    case = REF["cases"][name]
    worst, opt, _ = adapter_run(case)
    assert worst <= TOL, f"{worst:.3g}"
    assert_state_dict_equals_timm(opt.state_dict(), case["final"])


@pytest.mark.parametrize("name", ["kronw_stochastic_deterministic", "one_diag_flatten_grad_fit"])
def test_adapter_resumes_from_timm_checkpoint(name):
    """timm's state_dict after step MID (and torch's generator state then) loads into a new
    Kron, which continues on timm's trajectory; its own checkpoint loads back the same way."""
    case = REF["cases"][name]
    mid = REF["mid"]
    params = [torch.nn.Parameter(t) for t in unflat(case["traj"][mid - 1])]
    opt = Kron(params, **case["kwargs"])
    opt.load_state_dict(case["mid"])
    assert_state_dict_equals_timm(opt.state_dict(), case["mid"])
    torch.set_rng_state(case["mid_torch_rng"])
    worst, opt, _ = adapter_run(case, params, opt, mid)
    assert worst <= TOL, f"{worst:.3g}"
    assert_state_dict_equals_timm(opt.state_dict(), case["final"])


def test_param_groups_share_one_generator():
    """timm draws from one ``random.Random(1337)`` across groups: two groups step exactly
    as one group holding the same params (deterministic probes: each seed is a draw)."""
    case = REF["cases"]["kronw_stochastic_deterministic"]
    kwargs = case["kwargs"]
    one = [torch.nn.Parameter(t.clone()) for t in REF["init"].values()]
    two = [torch.nn.Parameter(t.clone()) for t in REF["init"].values()]
    opt_one = Kron(one, **kwargs)
    opt_two = Kron([{"params": two[:2]}, {"params": two[2:]}], **kwargs)
    for t in range(4):
        for a, b, g in zip(one, two, unflat(REF["grads"][t])):
            a.grad, b.grad = g, g.clone()
        opt_one.step()
        opt_two.step()
    for a, b in zip(one, two):
        assert torch.equal(a, b)
    assert rel(flat(one), case["traj"][3]) <= TOL
    assert opt_two.state_dict()["rng_state"] == opt_one.state_dict()["rng_state"]
    assert opt_one.rng.getstate() == opt_one.state_dict()["rng_state"]
    expected = random.Random(1337)
    assert opt_one.rng.getstate() != expected.getstate()


def test_signature_and_factory_bindings_equal_timm():
    assert str(inspect.signature(Kron)) == REF["signature"]
    model = torch.nn.Linear(3, 2).double()
    for name, ref in REF["registry"].items():
        info = get_optimizer_info(name)
        assert (get_optimizer_class(name, bind_defaults=False).__name__, dict(info.defaults or {})) == (
            ref["cls"], ref["defaults"])
        opt = create_optimizer_v2(model, name, lr=0.01, weight_decay=0.05)
        assert isinstance(opt, Kron)
        group = opt.param_groups[-1]
        assert group["decoupled_decay"] == ref["defaults"].get("decoupled_decay", False)
        assert group["corrected_weight_decay"] == ref["defaults"].get("corrected_weight_decay", False)


def test_adapter_checkpoint_pickle_round_trip_and_bad_rng_state():
    """Our own state_dict (and a pickle) resumes exactly; a malformed ``rng_state`` is
    refused before anything changes."""
    case = REF["cases"]["kronw_stochastic_deterministic"]
    _, opt, params = adapter_run({**case, "steps": 3})
    saved = opt.state_dict()
    copy = pickle.loads(pickle.dumps(opt))
    assert copy.deterministic and copy.state_dict()["rng_state"] == saved["rng_state"]
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = Kron(twin, **case["kwargs"])
    resumed.load_state_dict(saved)
    with pytest.raises(ValueError, match="625 words"):
        resumed.load_state_dict({**saved, "rng_state": (3, (1, 2), None)})
    assert resumed.state_dict()["rng_state"] == saved["rng_state"]
    for t in (3, 4):
        for p, q, g in zip(params, twin, unflat(REF["grads"][t])):
            p.grad, q.grad = g, g.clone()
        opt.step()
        resumed.step()
    for p, q in zip(params, twin):
        assert torch.equal(p, q)
    assert rel(flat(params), case["traj"][4]) <= TOL
