"""``adapters.monai`` and ``fo.monai.novograd`` against MONAI 1.6.1 itself (installed for the tests).

Trajectories over MONAI's argument grid run in float64 on two param groups (scalar, 1-D,
2-D, 4-D params; one param without a gradient every third step, one whose gradient is
exactly zero for its first steps, an lr change mid-run) and must equal MONAI's to 1e-12
relative. They run with torch's default dtype set to float64: MONAI keeps each param's
second moment (``exp_avg_sq``) in the default dtype, so under float32 its float64 run
carries float32 roundings (checked separately, to float32's precision).
"""

from __future__ import annotations

import inspect
import itertools

import pytest
import torch

import functional_optim as fo
from adapter_harness import (assert_state_dicts_close, groups, leaves, make_grads, make_params, max_rel_diff,
                             roundtrip, train)

monai_optimizers = pytest.importorskip("monai.optimizers")
from adapters import FunctionalOptimizer  # noqa: E402  (after the importorskip)
from adapters import monai as optimizers  # noqa: E402

TOL = 1e-12  # relative, float64
STEPS = 24
LAYOUT = [[0, 1, 2], [3, 4]]  # two groups; param 4 has no gradient on steps 0, 3, 6, ...
ZERO_GRAD = 1  # param 1 gets exactly zero gradients on its first steps (MONAI's v == 0 branch)


@pytest.fixture
def float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _grads(steps: int = STEPS, dtype: torch.dtype = torch.float64) -> list:
    grads = make_grads(steps, dtype=dtype)
    for g in grads[:3]:
        g[ZERO_GRAD] = torch.zeros_like(g[ZERO_GRAD])
    return grads


def _run(cls, kwargs, grads, values=None, lr_change_at: int | None = 10):
    params = leaves(make_params() if values is None else values)
    opt = cls(groups(params, [{}, {"lr": 0.02, "weight_decay": 0.0}], LAYOUT), **kwargs)

    def before(step):
        if step == lr_change_at:
            opt.param_groups[0]["lr"] = 0.01

    return opt, params, train(opt, params, grads, before_step=before)


GRID = [dict(lr=0.05, betas=betas, weight_decay=wd, grad_averaging=ga, amsgrad=ams)
        for betas, wd, ga, ams in itertools.product([(0.9, 0.98), (0.5, 0.9), (0.0, 0.0)], [0, 0.01],
                                                     [False, True], [False, True])]


def _id(kwargs):
    return "-".join(f"{k}={v}" for k, v in kwargs.items() if k != "lr")


@pytest.mark.parametrize("kwargs", GRID, ids=_id)
def test_trajectory_equals_monai(kwargs, float64_default):
    grads = _grads()
    _, _, ours = _run(optimizers.Novograd, kwargs, grads)
    _, _, ref = _run(monai_optimizers.Novograd, kwargs, grads)
    assert max_rel_diff(ours, ref) <= TOL
    # the run is not trivial: every param moved (the None-gradient one on 2/3 of the steps)
    assert all(not torch.equal(a, b) for a, b in zip(ours[-1], make_params()))


def test_trajectory_under_float32_default_dtype():
    """MONAI's second moment is float32 under the default dtype: with float32 params both
    runs are float32 and agree to a few float32 roundings over 24 steps."""
    assert torch.get_default_dtype() == torch.float32
    kwargs = dict(lr=0.05, weight_decay=0.01, grad_averaging=True, amsgrad=True)
    values = make_params(torch.float32)
    grads = _grads(dtype=torch.float32)
    _, _, ours = _run(optimizers.Novograd, kwargs, grads, values)
    _, _, ref = _run(monai_optimizers.Novograd, kwargs, grads, values)
    assert ours[-1][0].dtype == torch.float32
    assert max_rel_diff(ours, ref) <= 2e-6


STATE_CASES = [GRID[0], dict(lr=0.05, betas=(0.5, 0.9), weight_decay=0.01, grad_averaging=True, amsgrad=True)]


@pytest.mark.parametrize("kwargs", STATE_CASES, ids=_id)
def test_state_dict_loads_both_ways(kwargs, float64_default):
    grads = _grads(STEPS + 10)
    ours, ours_p, _ = _run(optimizers.Novograd, kwargs, grads[:STEPS])
    ref, ref_p, _ = _run(monai_optimizers.Novograd, kwargs, grads[:STEPS])
    # same format: keys, Python int steps, tensor dtypes and shapes, values to 1e-12
    assert_state_dicts_close(ours.state_dict(), ref.state_dict(), rtol=TOL)
    assert isinstance(ours.state_dict()["state"][0]["step"], int)
    assert ours.state_dict()["state"][0]["exp_avg_sq"].shape == ()

    to_monai, to_monai_p, _ = _run(monai_optimizers.Novograd, kwargs, [], [p.detach() for p in ours_p])
    to_monai.load_state_dict(roundtrip(ours.state_dict()))
    to_ours, to_ours_p, _ = _run(optimizers.Novograd, kwargs, [], [p.detach() for p in ref_p])
    to_ours.load_state_dict(roundtrip(ref.state_dict()))
    runs = [train(opt, params, grads[STEPS:])
            for opt, params in ((ref, ref_p), (ours, ours_p), (to_monai, to_monai_p), (to_ours, to_ours_p))]
    for run in runs[1:]:
        assert max_rel_diff(run, runs[0]) <= TOL
    assert_state_dicts_close(to_ours.state_dict(), ref.state_dict(), rtol=TOL)


def test_signature_equals_monai():
    ours = inspect.signature(optimizers.Novograd.__init__).parameters
    ref = inspect.signature(monai_optimizers.Novograd.__init__).parameters
    assert [(p.name, p.kind, p.default) for p in ours.values()] == \
        [(p.name, p.kind, p.default) for p in ref.values()]
    assert list(ours) == ["self", "params", "lr", "betas", "eps", "weight_decay", "grad_averaging", "amsgrad"]
    fn = inspect.signature(fo.monai.novograd).parameters
    assert [(p.name, p.default) for p in fn.values()] == [
        ("lr", 1e-3), ("betas", (0.9, 0.98)), ("eps", 1e-8), ("weight_decay", 0.0), ("grad_averaging", False),
        ("amsgrad", False)]
    gpg = inspect.signature(optimizers.generate_param_groups).parameters
    ref_gpg = inspect.signature(monai_optimizers.generate_param_groups).parameters
    assert [(p.name, p.default) for p in gpg.values()] == [(p.name, p.default) for p in ref_gpg.values()]


def test_namespace_mirrors_monai_optimizers():
    public = {n for n in dir(monai_optimizers) if not n.startswith("_")
              and not inspect.ismodule(getattr(monai_optimizers, n)) and n != "annotations"}
    assert public == set(optimizers.__all__) == {
        "LearningRateFinder", "ExponentialLR", "LinearLR", "WarmupCosineSchedule", "Novograd",
        "generate_param_groups"}
    import adapters
    assert optimizers.LearningRateFinder is adapters.LearningRateFinder
    assert optimizers.WarmupCosineSchedule is adapters.WarmupCosineSchedule
    assert fo.monai.novograd is fo.novograd and fo.monai.scale_by_novograd is fo.scale_by_novograd
    assert not hasattr(torch.optim, "Novograd") and not hasattr(torch.optim, "NovoGrad")


@pytest.mark.parametrize("kwargs", [GRID[0], GRID[-1], GRID[7]], ids=_id)
def test_functional_equals_class(kwargs, float64_default):
    """fo.monai.novograd on a list of tensors (None gradients skipped) equals the class
    on one param group."""
    grads = _grads()
    params = leaves(make_params())
    opt = optimizers.Novograd(params, **kwargs)
    ref = train(opt, params, grads)
    tx = fo.monai.novograd(**kwargs)
    ps = make_params()
    state = tx.init(ps)
    ours = []
    for g in grads:
        u, state = tx.update(g, state, ps)
        ps = fo.apply_updates(ps, u)
        ours.append(list(ps))
    assert max_rel_diff(ours, ref) <= TOL
    assert fo.needs(tx) == fo.Needs.PER_PARAM  # per-param norms and scalar state: flat, segmented


def test_scale_by_novograd_values():
    """Exact values: v stays 0 on zero gradients, takes ||g||^2 whole at the first nonzero
    one, then averages; amsgrad divides by the running maximum."""
    eps = 1e-8
    for amsgrad in (False, True):
        tx = fo.scale_by_novograd(b2=0.5, eps=eps, amsgrad=amsgrad)
        state = tx.init({"w": torch.zeros(2, dtype=torch.float64)})
        # (gradient, v after it, the v the update divides by)
        seq = [([0.0, 0.0], 0.0, 0.0), ([3.0, 4.0], 25.0, 25.0), ([1.0, 0.0], 13.0, 25.0 if amsgrad else 13.0)]
        for g, nu, divisor in seq:
            g = torch.tensor(g, dtype=torch.float64)
            u, state = tx.update({"w": g}, state)
            assert state.nu["w"].item() == nu and state.nu["w"].dtype == torch.float64
            torch.testing.assert_close(u["w"], g / (divisor ** 0.5 + eps), rtol=1e-15, atol=0)
        assert int(state.count["w"]) == 3
        if amsgrad:
            assert state.nu_max["w"].item() == 25.0


def test_compiled_step_equals_eager(float64_default):
    """compile=True runs (on the flat buffers: per-param norms segmented, the per-param
    scalar state one value per block) and equals the eager steps."""
    grads = _grads(4)
    runs = []
    for compile_step in (False, True):
        params = leaves(make_params())
        opt = FunctionalOptimizer(params, fo.monai.novograd, compile=compile_step, lr=0.05, amsgrad=True,
                                  weight_decay=0.01)
        runs.append(train(opt, params, grads))
    assert max_rel_diff(runs[1], runs[0]) <= TOL


# -- generate_param_groups ---------------------------------------------------------------

def _network(norm: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(),
                               torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)),
                               torch.nn.BatchNorm1d(2) if norm else torch.nn.Identity())


PG_CASES = [
    ([lambda n: n[0], lambda x: "2.1" in x[0]], ["select", "filter"], [1e-2, 1e-3]),
    ([lambda x: "bias" in x[0], lambda n: n[2][0]], ["Filter", "SELECT"], [0.5, 0.25]),
    (lambda x: x[0].endswith("weight"), "filter", 0.1),  # one match, values broadcast
    ([lambda n: n[3], lambda n: n[0]], "select", 1e-4),
]


def _describe(groups_):
    return [([id(p) for p in g["params"]], {k: v for k, v in g.items() if k != "params"}) for g in groups_]


@pytest.mark.parametrize("include_others", [True, False])
@pytest.mark.parametrize("case", range(len(PG_CASES)))
def test_generate_param_groups_equals_monai(case, include_others):
    net = _network()
    matches, types, lrs = PG_CASES[case]
    ours = optimizers.generate_param_groups(net, matches, types, lrs, include_others=include_others)
    ref = monai_optimizers.generate_param_groups(net, matches, types, lrs, include_others=include_others)
    assert _describe(ours) == _describe(ref)
    assert len(ours) == (len(matches) if isinstance(matches, list) else 1) + include_others
    assert all(isinstance(g["params"], list) and g["params"] for g in ours)


def test_generate_param_groups_feed_novograd_like_monai(float64_default):
    # no batch norm: it makes the gradients of the biases before it rounding noise (~1e-15),
    # which a per-param normalisation turns into full-size, chaotic steps
    net_a, net_b = _network(norm=False).double(), _network(norm=False).double()
    args = ([lambda n: n[0], lambda x: "2.1" in x[0]], ["select", "filter"], [1e-2, 1e-3])
    opt_a = optimizers.Novograd(optimizers.generate_param_groups(net_a, *args), lr=0.05)
    opt_b = monai_optimizers.Novograd(monai_optimizers.generate_param_groups(net_b, *args), lr=0.05)
    assert [g["lr"] for g in opt_a.param_groups] == [g["lr"] for g in opt_b.param_groups] == [1e-2, 1e-3, 0.05]
    x = torch.randn(8, 3, dtype=torch.float64)
    for _ in range(5):
        for net, opt in ((net_a, opt_a), (net_b, opt_b)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for a, b in zip(net_a.parameters(), net_b.parameters()):
        assert ((a - b).abs().max() / b.abs().max()).item() <= TOL


def test_generate_param_groups_errors_name_the_argument():
    net = _network()
    for fn in (optimizers.generate_param_groups, monai_optimizers.generate_param_groups):
        with pytest.raises(ValueError, match="unsupported layer match type: pick"):
            fn(net, [lambda n: n[0]], ["pick"], [0.1])
        with pytest.raises(ValueError, match="Sequence must have length 2, got 3"):
            fn(net, [lambda n: n[0], lambda n: n[2]], ["select"] * 2, [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="match_types"):
        optimizers.generate_param_groups(net, [lambda n: n[0]], ["pick"], [0.1])
    with pytest.raises(ValueError, match="lr_values"):
        optimizers.generate_param_groups(net, [lambda n: n[0], lambda n: n[2]], "select", [0.1, 0.2, 0.3])


# -- errors ------------------------------------------------------------------------------

BAD = [
    (dict(lr=-1e-3), "Invalid learning rate: -0.001", "lr"),
    (dict(eps=-1.0), "Invalid epsilon value: -1.0", "eps"),
    (dict(betas=(1.0, 0.98)), "Invalid beta parameter at index 0: 1.0", "betas[0]"),
    (dict(betas=(0.9, -0.5)), "Invalid beta parameter at index 1: -0.5", "betas[1]"),
    (dict(weight_decay=-0.1), "Invalid weight_decay value: -0.1", "weight_decay"),
]


@pytest.mark.parametrize("kwargs,monai_message,name", BAD, ids=[b[2] for b in BAD])
def test_bad_arguments_raise_monai_errors_naming_the_argument(kwargs, monai_message, name):
    with pytest.raises(ValueError) as ref:
        monai_optimizers.Novograd(leaves(make_params()), **kwargs)
    assert str(ref.value) == monai_message
    with pytest.raises(ValueError) as ours:
        optimizers.Novograd(leaves(make_params()), **kwargs)
    assert str(ours.value).startswith(monai_message) and name in str(ours.value)[len(monai_message):]
    with pytest.raises(ValueError, match=name.split("[")[0]):
        fo.monai.novograd(**kwargs)


def test_other_bad_arguments():
    params = leaves(make_params())
    with pytest.raises(ValueError, match="betas must be a pair"):
        optimizers.Novograd(params, betas=(0.9,))
    with pytest.raises(TypeError, match="amsgrad must be a bool"):
        fo.monai.novograd(amsgrad=1)
    with pytest.raises(TypeError, match="grad_averaging must be a bool"):
        fo.monai.novograd(grad_averaging="yes")
    # a bad value in a param group is refused too (MONAI checks only the defaults)
    with pytest.raises(ValueError, match="Invalid lr"):
        optimizers.Novograd([{"params": params, "lr": -1.0}])
