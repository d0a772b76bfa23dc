"""fo.lbfgs against torch.optim.LBFGS: one update is one step(closure), float64.

Two kinds of parity:
* free-running: 10 calls each side, params and losses within 1e-10 relative;
* synchronised: before every call our params are reset to torch's, then our whole state
  must equal torch's exactly and our new params must be within the one rounding of
  ``p + (new - p)`` (the updates form cannot always represent torch's in-place result
  exactly). This is the test for configurations whose trajectories amplify that one
  rounding chaotically (fixed-step L-BFGS on Rosenbrock with lr=1).
"""

from __future__ import annotations

import pytest
import torch

import functional_optim as fo

F64 = torch.float64


# ---------------------------------------------------------------------------------
# Problems: a loss over a params dict, and initial params


def rosenbrock(p):
    x = torch.cat([p["a"].reshape(-1), p["b"].reshape(-1)])
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


def rosenbrock_params():
    return {"a": torch.tensor([-1.2, 1.0], dtype=F64),
            "b": torch.tensor([[-1.2, 1.0], [0.5, 0.3]], dtype=F64)}


_gen = torch.Generator().manual_seed(0)
_X = torch.randn(64, 5, generator=_gen, dtype=F64)
_Y = (torch.rand(64, generator=_gen, dtype=F64) < 0.5).to(F64)
_W0 = torch.randn(5, generator=_gen, dtype=F64)


def logistic(p):
    """L2-regularised logistic regression; ``unused`` never reaches the loss (None grad)."""
    z = _X @ p["w"] + p["b"]
    return torch.nn.functional.binary_cross_entropy_with_logits(z, _Y) + 1e-3 * (p["w"] ** 2).sum()


def logistic_params():
    return {"w": _W0.clone(), "b": torch.tensor(0.1, dtype=F64), "unused": torch.ones(3, dtype=F64)}


PROBLEMS = {"rosenbrock": (rosenbrock, rosenbrock_params), "logistic": (logistic, logistic_params)}


def value_and_grads(fn, params):
    """The loss at params and its gradient (None for leaves the loss does not reach)."""
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    loss = fn(leaves)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return loss.detach(), dict(zip(leaves, grads))


class TorchRun:
    """torch.optim.LBFGS on a copy of the params; ``step()`` returns torch's loss.

    torch's param list is in the params tree's leaf order (optree sorts dict keys), the
    order of fo.lbfgs's flat vector, so that the two flat states line up.
    """

    def __init__(self, fn, params, kwargs):
        self.fn = fn
        self.leaves = {k: params[k].clone().requires_grad_(True) for k in sorted(params)}
        self.opt = torch.optim.LBFGS(list(self.leaves.values()), **kwargs)

    def closure(self):
        self.opt.zero_grad()
        loss = self.fn(self.leaves)
        loss.backward()
        return loss

    def step(self):
        return float(self.opt.step(self.closure).detach())

    def params(self):
        return {k: v.detach().clone() for k, v in self.leaves.items()}

    def state(self):
        return self.opt.state[next(iter(self.leaves.values()))]


def functional_step(tx, fn, params, state, donate=False):
    value, grads = value_and_grads(fn, params)
    updates, state = tx.update(grads, state, params, value=value, value_fn=fn, donate=donate)
    return float(value), fo.apply_updates(params, updates), state


def rel_diff(ours, ref):
    return max(((ours[k] - ref[k]).abs().max() / ref[k].abs().max().clamp_min(1e-300)).item() for k in ref)


def torch_view(state: fo.LBFGSState) -> dict:
    """Our state in torch.optim.LBFGS's layout (the key mapping the adapter uses)."""
    rows = [(int(state.history_start) + i) % state.old_dirs.shape[0] for i in range(int(state.history_len))]
    return {
        "func_evals": int(state.func_evals), "n_iter": int(state.n_iter), "d": state.d,
        "t": float(state.t), "old_dirs": [state.old_dirs[r] for r in rows],
        "old_stps": [state.old_stps[r] for r in rows], "ro": [state.ro[r] for r in rows],
        "H_diag": state.H_diag, "prev_flat_grad": state.prev_flat_grad, "prev_loss": float(state.prev_loss),
    }


def assert_same_state(ours: fo.LBFGSState, ref: dict):
    view = torch_view(ours)
    assert view["func_evals"] == ref["func_evals"] and view["n_iter"] == ref["n_iter"]
    if "d" not in ref:  # torch returned before its first iteration
        return
    assert torch.equal(view["d"], ref["d"])
    assert view["t"] == float(ref["t"])
    assert view["prev_loss"] == ref["prev_loss"]
    assert torch.equal(view["prev_flat_grad"], ref["prev_flat_grad"])
    assert float(view["H_diag"]) == float(ref["H_diag"])
    assert len(view["old_dirs"]) == len(ref["old_dirs"])
    for key in ("old_dirs", "old_stps", "ro"):
        for a, b in zip(view[key], ref[key]):
            assert torch.equal(a, torch.as_tensor(b, dtype=a.dtype))


# ---------------------------------------------------------------------------------
# Parity

FREE_RUNNING = [
    ("rosenbrock", dict(line_search_fn="strong_wolfe")),
    ("rosenbrock", dict(line_search_fn="strong_wolfe", history_size=3)),
    ("rosenbrock", dict(line_search_fn="strong_wolfe", max_iter=4)),
    ("rosenbrock", dict(line_search_fn="strong_wolfe", max_eval=7)),  # max_eval cuts searches
    ("rosenbrock", dict(line_search_fn="strong_wolfe", lr=3.0)),  # zoom: old low becomes high
    ("rosenbrock", dict(line_search_fn="strong_wolfe", lr=300.0)),  # zoom safeguards
    ("rosenbrock", dict(lr=0.1)),
    ("rosenbrock", dict(lr=0.5, max_iter=5, history_size=2)),
    ("rosenbrock", dict(tolerance_change=1e-3)),  # lack-of-progress breaks
    ("logistic", dict(line_search_fn="strong_wolfe")),  # converges: tolerance_grad hits
    ("logistic", dict(line_search_fn="strong_wolfe", history_size=2, tolerance_grad=1e-4)),
    ("logistic", dict(line_search_fn="strong_wolfe", lr=300.0)),  # zoom safeguards
    ("logistic", dict(lr=0.1)),
    ("logistic", dict(lr=0.1, max_iter=4, history_size=1)),
]


@pytest.mark.parametrize("problem,kwargs", FREE_RUNNING, ids=[f"{p}-{kw}" for p, kw in FREE_RUNNING])
def test_free_running_parity(problem, kwargs):
    fn, make = PROBLEMS[problem]
    ref = TorchRun(fn, make(), kwargs)
    tx = fo.lbfgs(**kwargs)
    params = make()
    state = tx.init(params)
    first_loss = None
    for _ in range(10):
        ref_loss = ref.step()
        loss, params, state = functional_step(tx, fn, params, state)
        first_loss = first_loss or abs(ref_loss)
        assert abs(loss - ref_loss) <= 1e-10 * first_loss
        assert rel_diff(params, ref.params()) <= 1e-10
    torch_state = ref.state()
    assert int(state.func_evals) == torch_state["func_evals"]
    assert int(state.n_iter) == torch_state["n_iter"]


SYNCHRONISED = [
    ("rosenbrock", dict()),  # lr=1 fixed step: chaotic, amplifies one rounding to 1e-7
    ("rosenbrock", dict(history_size=2, max_iter=5)),
    ("rosenbrock", dict(max_iter=4)),
    ("rosenbrock", dict(line_search_fn="strong_wolfe", history_size=3)),
    ("rosenbrock", dict(line_search_fn="strong_wolfe", lr=0.03)),  # extrapolation, [0, t] fallback
    ("logistic", dict()),  # lr=1 fixed step diverges; still step for step
    ("logistic", dict(line_search_fn="strong_wolfe", max_iter=3)),
]


@pytest.mark.parametrize("problem,kwargs", SYNCHRONISED, ids=[f"{p}-{kw}" for p, kw in SYNCHRONISED])
def test_synchronised_parity_exact_state(problem, kwargs):
    fn, make = PROBLEMS[problem]
    ref = TorchRun(fn, make(), kwargs)
    tx = fo.lbfgs(**kwargs)
    state = tx.init(make())
    for _ in range(10):
        start = ref.params()
        ref_loss = ref.step()
        loss, params, state = functional_step(tx, fn, start, state)
        assert loss == ref_loss
        assert_same_state(state, ref.state())
        for k, new in ref.params().items():  # one rounding of p + (new - p)
            bound = 2 * torch.finfo(F64).eps * torch.maximum(start[k].abs(), new.abs())
            assert bool(((params[k] - new).abs() <= bound).all()), k


@pytest.mark.parametrize("kwargs", [dict(line_search_fn="strong_wolfe"), dict(history_size=2, max_iter=5)],
                         ids=["strong_wolfe", "fixed_step"])
def test_float32_synchronised_state_is_exact(kwargs):
    """The scalar types follow torch's (float32 slopes, Python-float losses), so even in
    float32 the state is bit-identical call by call."""
    make = lambda: {k: v.float() for k, v in rosenbrock_params().items()}  # noqa: E731
    ref = TorchRun(rosenbrock, make(), kwargs)
    tx = fo.lbfgs(**kwargs)
    state = tx.init(make())
    for _ in range(5):
        start = ref.params()
        ref.step()
        _, params, state = functional_step(tx, rosenbrock, start, state)
        assert_same_state(state, ref.state())
        assert params["a"].dtype == torch.float32 and state.d.dtype == torch.float32


def test_complex_params_match_torch():
    target = torch.tensor([1 + 2j, -0.5 + 0.25j, 3 - 1j], dtype=torch.complex128)

    def fn(p):
        return ((p["z"] - target).abs() ** 2).sum() + (p["z"].real ** 4).sum()

    kwargs = dict(line_search_fn="strong_wolfe", max_iter=5)
    make = lambda: {"z": torch.zeros(3, dtype=torch.complex128)}  # noqa: E731
    ref = TorchRun(fn, make(), kwargs)
    tx = fo.lbfgs(**kwargs)
    params, state = make(), tx.init(make())
    for _ in range(5):
        ref_loss = ref.step()
        loss, params, state = functional_step(tx, fn, params, state)
        assert abs(loss - ref_loss) <= 1e-10 * max(abs(ref_loss), 1e-3)
        assert rel_diff(params, ref.params()) <= 1e-10
    assert state.d.shape == (6,)  # real and imaginary parts


def test_module_through_functional_call():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 1).double()
    ref_model = torch.nn.Linear(5, 1).double()
    ref_model.load_state_dict(model.state_dict())

    def fn(p):
        z = torch.func.functional_call(model, p, (_X,)).squeeze(-1)
        return torch.nn.functional.binary_cross_entropy_with_logits(z, _Y)

    opt = torch.optim.LBFGS(ref_model.parameters(), line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(ref_model(_X).squeeze(-1), _Y)
        loss.backward()
        return loss

    tx = fo.lbfgs(line_search_fn="strong_wolfe")
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    state = tx.init(params)
    for _ in range(3):
        ref_loss = float(opt.step(closure).detach())
        loss, params, state = functional_step(tx, fn, params, state)
        assert abs(loss - ref_loss) <= 1e-10 * abs(ref_loss)
    assert rel_diff(params, dict(ref_model.named_parameters())) <= 1e-10


# ---------------------------------------------------------------------------------
# Tolerances and counters


def test_nan_loss_in_line_search_fails_cleanly():
    def unbounded(p):  # indefinite quadratic plus a sine: overflows to NaN along the search
        x = p["x"]
        return (torch.sin(3 * x) + 0.1 * x ** 2).sum() + 0.5 * (x[1:] * x[:-1]).sum()

    kwargs = dict(lr=30.0, line_search_fn="strong_wolfe")
    make = lambda: {"x": torch.linspace(-2, 3, 6, dtype=F64)}  # noqa: E731
    ref = TorchRun(unbounded, make(), kwargs)
    tx = fo.lbfgs(**kwargs)
    params, state = make(), tx.init(make())
    with pytest.raises(FloatingPointError, match="NaN"):
        for _ in range(10):
            _, params, state = functional_step(tx, unbounded, params, state)
    with pytest.raises(IndexError):  # torch fails at the same point, less clearly
        for _ in range(10):
            ref.step()


def test_tolerance_grad_at_start_returns_without_moving():
    kwargs = dict(tolerance_grad=1e3)
    ref = TorchRun(rosenbrock, rosenbrock_params(), kwargs)
    tx = fo.lbfgs(**kwargs)
    params = rosenbrock_params()
    state = tx.init(params)
    for _ in range(2):
        ref.step()
        value, grads = value_and_grads(rosenbrock, params)
        updates, state = tx.update(grads, state, params, value=value, value_fn=rosenbrock)
        assert all(bool((u == 0).all()) for u in updates.values())
    assert int(state.func_evals) == ref.state()["func_evals"] == 2
    assert int(state.n_iter) == ref.state()["n_iter"] == 0


def test_history_ring_buffer_wraps_like_torch_list():
    kwargs = dict(history_size=3, max_iter=7)
    ref = TorchRun(rosenbrock, rosenbrock_params(), kwargs)
    tx = fo.lbfgs(**kwargs)
    state = tx.init(rosenbrock_params())
    for _ in range(3):
        start = ref.params()
        ref.step()
        _, _, state = functional_step(tx, rosenbrock, start, state)
        assert_same_state(state, ref.state())
    assert int(state.history_len) == 3 and int(state.history_start) != 0  # wrapped around


# ---------------------------------------------------------------------------------
# Contracts: purity, donation, required extras, validation


def test_update_is_pure_and_repeatable():
    tx = fo.lbfgs(line_search_fn="strong_wolfe", max_iter=5)
    params = rosenbrock_params()
    state = tx.init(params)
    _, params, state = functional_step(tx, rosenbrock, params, state)  # non-trivial history
    value, grads = value_and_grads(rosenbrock, params)
    snapshot = [t.clone() for t in fo.tree.leaves((params, grads, state))]
    out1 = tx.update(grads, state, params, value=value, value_fn=rosenbrock)
    out2 = tx.update(grads, state, params, value=value, value_fn=rosenbrock)
    for before, after in zip(snapshot, fo.tree.leaves((params, grads, state))):
        assert torch.equal(before, after)
    for a, b in zip(fo.tree.leaves(out1), fo.tree.leaves(out2)):
        assert torch.equal(a, b)


def test_donated_state_gives_the_same_result():
    tx = fo.lbfgs(history_size=2, max_iter=4)
    params = rosenbrock_params()
    pure_p, pure_s = params, tx.init(params)
    don_p, don_s = params, tx.init(params)
    for _ in range(4):
        _, pure_p, pure_s = functional_step(tx, rosenbrock, pure_p, pure_s)
        old = don_s.old_dirs
        _, don_p, don_s = functional_step(tx, rosenbrock, don_p, don_s, donate=True)
        assert don_s.old_dirs is old  # written in place
    for a, b in zip(fo.tree.leaves((pure_p, pure_s)), fo.tree.leaves((don_p, don_s))):
        assert torch.equal(a, b)


def test_missing_value_or_value_fn_fails_loudly():
    tx = fo.lbfgs()
    params = rosenbrock_params()
    state = tx.init(params)
    value, grads = value_and_grads(rosenbrock, params)
    with pytest.raises(TypeError, match="value, value_fn"):
        tx.update(grads, state, params)
    with pytest.raises(TypeError, match="value_fn"):
        tx.update(grads, state, params, value=value)
    with pytest.raises(TypeError, match="value"):
        tx.update(grads, state, params, value_fn=rosenbrock)
    with pytest.raises(TypeError, match="params"):
        tx.update(grads, state, None, value=value, value_fn=rosenbrock)
    with pytest.raises(TypeError, match="value_fn must be callable"):
        tx.update(grads, state, params, value=value, value_fn=3)
    with pytest.raises(TypeError, match="one-element tensor"):
        tx.update(grads, state, params, value=value, value_fn=lambda p: torch.ones(2))
    with pytest.raises(ValueError, match="structure"):
        tx.update({"a": grads["a"]}, state, params, value=value, value_fn=rosenbrock)


def test_missing_extras_through_chain():
    tx = fo.chain(fo.lbfgs())
    params = rosenbrock_params()
    value, grads = value_and_grads(rosenbrock, params)
    with pytest.raises(TypeError, match="value_fn"):
        tx.update(grads, tx.init(params), params, value=value)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(lr=-1.0), ValueError, "learning rate"),
    (dict(lr=torch.tensor([1.0, 2.0])), ValueError, "lr"),
])
def test_invalid_hyperparameters_raise_like_torch(kwargs, error, match):
    with pytest.raises(error, match=match):
        fo.lbfgs(**kwargs)
    with pytest.raises(error):
        torch.optim.LBFGS([torch.zeros(1, requires_grad=True)], **kwargs)


def test_unknown_line_search_is_valueerror_and_torchs_runtimeerror():
    with pytest.raises(ValueError, match="line_search_fn"):
        fo.lbfgs(line_search_fn="backtracking")
    with pytest.raises(RuntimeError, match="line_search_fn"):
        fo.lbfgs(line_search_fn="backtracking")
    # torch raises RuntimeError at its first step for the same input
    ref = TorchRun(rosenbrock, rosenbrock_params(), dict(line_search_fn="backtracking"))
    with pytest.raises(RuntimeError):
        ref.step()


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(max_iter=0), ValueError, "max_iter"),
    (dict(max_iter=2.5), TypeError, "max_iter"),
    (dict(max_eval=0), ValueError, "max_eval"),
    (dict(history_size=0), ValueError, "history_size"),
    (dict(tolerance_grad="small"), TypeError, "tolerance_grad"),
    (dict(tolerance_change=float("nan")), ValueError, "tolerance_change"),
])
def test_invalid_counts_and_tolerances_name_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        fo.lbfgs(**kwargs)


def test_state_fields_are_uniquely_findable():
    state = fo.chain(fo.lbfgs()).init(rosenbrock_params())
    for name in fo.LBFGSState._fields:
        assert fo.tree.get(state, name) is getattr(state[0], name)
