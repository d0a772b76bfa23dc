"""``fo.timm.lamb``/``lars``/``nvnovograd`` and ``adapters.timm.Lamb``/``Lars``/``NvNovoGrad``
against timm 1.0.31's trajectories.

The references (``tests/reference/timm_layerwise.pt``) were recorded from timm itself by
``tests/reference/generate_timm_layerwise.py``: float64 params (a 1-D bias starting at
zero, a 2-D matrix, a 4-D conv weight), deterministic gradients (one exactly zero, some
missing), 6 steps, for each option of the three optimizers (timm's registry variants
``lamb``, ``lambc``, ``lambw``, ``lambcd``, ``clamb``, ``clambw``, ``lars``, ``larc``,
``nlars``, ``nlarc``, ``novograd``, ``novogradw``, ``novogradc`` and more), with the final
``state_dict``. timm is never imported here.

Tolerance: 1e-13 relative per param (max |ours - timm| / max |timm|, over steps). Ours and
timm's differ only in the rounding order of a few scalar products (measured <= 6e-16).
The tests run with torch's default dtype float64, as the recording did (NvNovoGrad keeps
its second moment and Lamb its group ``step`` in the default dtype).
"""

from __future__ import annotations

import inspect
import os

import pytest
import torch

import functional_optim as fo
from adapters import FunctionalOptimizer
from adapters.timm import Lamb, Lars, NvNovoGrad

TOL = 1e-13
REF = torch.load(os.path.join(os.path.dirname(__file__), "reference", "timm_layerwise.pt"), weights_only=True)
CASES = REF["cases"]
CLASSES = {"Lamb": Lamb, "Lars": Lars, "NvNovoGrad": NvNovoGrad}
FUNCTIONAL = {"Lamb": fo.timm.lamb, "Lars": fo.timm.lars, "NvNovoGrad": fo.timm.nvnovograd}


@pytest.fixture(autouse=True)
def float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _rel(ours: list, ref: list) -> float:
    """max over steps and params of max|ours - ref| / max|ref|."""
    worst = 0.0
    assert len(ours) == len(ref)
    for step_ours, step_ref in zip(ours, ref):
        for a, b in zip(step_ours, step_ref):
            assert a.shape == b.shape and a.dtype == b.dtype == torch.float64
            worst = max(worst, ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item())
    return worst


def _grads_at(spec: dict, step: int) -> list:
    missing = {i for s, i in spec["none"] if s == step}
    return [None if i in missing else g.clone() for i, g in enumerate(REF["grads"][step])]


def _run_class(spec: dict, cls=None, steps=None, params=None, opt=None, **extra_kwargs):
    cls = cls or CLASSES[spec["opt"]]
    params = params if params is not None else [torch.nn.Parameter(p.clone()) for p in REF["params"]]
    if opt is None:
        groups = [{"params": [params[i] for i in idx], **o} for idx, o in spec["groups"]]
        opt = cls(groups, **spec["kwargs"], **extra_kwargs)
    trajectory = []
    for step in steps if steps is not None else range(REF["steps"]):
        for group, lr in spec["lr_at"].get(step, {}).items():
            opt.param_groups[group]["lr"] = lr
        for p, g in zip(params, _grads_at(spec, step)):
            p.grad = g
        opt.step()
        trajectory.append([p.detach().clone() for p in params])
    return opt, params, trajectory


def _run_functional(spec: dict) -> list:
    """The alias on the list of params (one group), lr a 0-d tensor changed in place."""
    kwargs = dict(spec["kwargs"])
    lr = torch.tensor(kwargs.pop("lr"), dtype=torch.float64)
    tx = FUNCTIONAL[spec["opt"]](lr=lr, **kwargs)
    params = [p.clone() for p in REF["params"]]
    state = tx.init(params)
    trajectory = []
    for step in range(REF["steps"]):
        for _, value in spec["lr_at"].get(step, {}).items():
            lr.fill_(value)
        updates, state = tx.update(_grads_at(spec, step), state, params)
        params = fo.apply_updates(params, updates)
        trajectory.append([p.clone() for p in params])
    return trajectory


def _assert_same_state_dict(ours, ref, path="state_dict") -> None:
    """Same keys, types, tensor dtypes and shapes; tensor values to TOL."""
    if isinstance(ref, dict):
        assert isinstance(ours, dict) and set(ours) == set(ref), f"{path}: {sorted(ours)} vs {sorted(ref)}"
        for key in ref:
            _assert_same_state_dict(ours[key], ref[key], f"{path}[{key!r}]")
    elif isinstance(ref, (list, tuple)):
        assert type(ours) is type(ref) and len(ours) == len(ref), path
        for i, (a, b) in enumerate(zip(ours, ref)):
            _assert_same_state_dict(a, b, f"{path}[{i}]")
    elif isinstance(ref, torch.Tensor):
        assert isinstance(ours, torch.Tensor) and ours.shape == ref.shape and ours.dtype == ref.dtype, path
        torch.testing.assert_close(ours, ref, rtol=TOL, atol=TOL * ref.abs().max().item(), msg=path)
    else:
        assert type(ours) is type(ref) and ours == ref, f"{path}: {ours!r} vs {ref!r}"


# -- trajectories ------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CASES))
def test_class_trajectory_equals_timm(name):
    spec = CASES[name]
    _, params, ours = _run_class(spec)
    assert _rel(ours, spec["trajectory"]) <= TOL
    # not trivial: every param moved from where it started
    assert all(not torch.equal(p.detach(), p0) for p, p0 in zip(params, REF["params"]))


ONE_GROUP = sorted(n for n, s in CASES.items() if len(s["groups"]) == 1)


@pytest.mark.parametrize("name", ONE_GROUP)
def test_functional_trajectory_equals_timm(name):
    spec = CASES[name]
    assert _rel(_run_functional(spec), spec["trajectory"]) <= TOL


def test_two_groups_functional_with_a_global_clip_divisor():
    """timm clips over every group: the functional form takes the divisor from outside
    (``clip_divisor``), and the class computes it so."""
    spec = CASES["lamb_two_groups"]
    (idx0, opts0), (idx1, opts1) = spec["groups"]
    base = dict(spec["kwargs"])
    txs = [fo.timm.lamb(**{**base, **opts0}), fo.timm.lamb(**{**base, **opts1})]
    params = [p.clone() for p in REF["params"]]
    states = [tx.init([params[i] for i in idx]) for tx, idx in zip(txs, (idx0, idx1))]
    trajectory = []
    for step in range(REF["steps"]):
        grads = _grads_at(spec, step)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        divisor = (norm / base["max_grad_norm"]).clamp(min=1.0)
        for j, (tx, idx) in enumerate(zip(txs, (idx0, idx1))):
            u, states[j] = tx.update([grads[i] for i in idx], states[j], [params[i] for i in idx],
                                     clip_divisor=divisor)
            for i, ui in zip(idx, u):
                params[i] = params[i] + ui
        trajectory.append([p.clone() for p in params])
    assert _rel(trajectory, spec["trajectory"]) <= TOL
    # without the shared divisor each group would clip on its own norm: another trajectory
    assert _rel(_run_functional({**spec, "groups": [([0, 1, 2], {})]}), spec["trajectory"]) > 1e-6


def test_compiled_class_step_equals_timm():
    """``compile=True`` through ``FunctionalOptimizer`` (flat buffers, segmented norms:
    Lamb's trust ratio is a per-param reduction) matches timm too."""
    spec = CASES["lambcd_lr_change"]
    kwargs = dict(spec["kwargs"])
    params = [torch.nn.Parameter(p.clone()) for p in REF["params"]]
    opt = FunctionalOptimizer(params, fo.timm.lamb, compile=True, **kwargs)
    assert fo.needs(fo.timm.lamb(**kwargs)) == fo.Needs.PER_PARAM
    _, _, ours = _run_class(spec, params=params, opt=opt)
    assert opt._groups[0].engine.kind == "flat"
    assert _rel(ours, spec["trajectory"]) <= TOL
    lars = CASES["nlarc_lr_change"]
    params = [torch.nn.Parameter(p.clone()) for p in REF["params"]]
    opt = FunctionalOptimizer(params, fo.timm.lars, compile=True, **lars["kwargs"])
    _, _, ours = _run_class(lars, params=params, opt=opt)
    assert _rel(ours, lars["trajectory"]) <= TOL


# -- state_dict ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CASES))
def test_state_dict_equals_timm(name):
    spec = CASES[name]
    opt, _, _ = _run_class(spec)
    _assert_same_state_dict(opt.state_dict(), spec["state_dict"])


@pytest.mark.parametrize("name", ["lamb_two_groups", "lambcd_lr_change", "larc", "novogradc_lr_change",
                                  "lamb_none_grad", "lars_none_grad"])
def test_timm_checkpoint_loads_and_continues(name):
    """timm's state_dict after 3 steps (recorded after 6: we run ours for 3, save, reload
    into a fresh optimizer, run 3 more) and timm's final state_dict load into ours."""
    spec = CASES[name]
    first, params, _ = _run_class(spec, steps=range(3))
    saved = first.state_dict()
    fresh_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    groups = [{"params": [fresh_params[i] for i in idx], **o} for idx, o in spec["groups"]]
    second = CLASSES[spec["opt"]](groups, **spec["kwargs"])
    second.load_state_dict(saved)
    _, _, rest = _run_class(spec, steps=range(3, REF["steps"]), params=fresh_params, opt=second)
    assert _rel(rest, spec["trajectory"][3:]) <= TOL
    # timm's own final checkpoint, loaded into ours, exports the same state_dict
    third = CLASSES[spec["opt"]]([{"params": [torch.nn.Parameter(REF["params"][i].clone()) for i in idx], **o}
                                  for idx, o in spec["groups"]], **spec["kwargs"])
    third.load_state_dict(spec["state_dict"])
    _assert_same_state_dict(third.state_dict(), spec["state_dict"])


# -- signatures, namespaces, errors ----------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CLASSES))
def test_signature_equals_timm(name):
    assert str(inspect.signature(CLASSES[name])) == REF["signatures"][name]
    # the functional alias: timm's arguments (without params and foreach), same order and defaults
    ref = [p for p in inspect.signature(CLASSES[name]).parameters.values() if p.name not in ("params", "foreach")]
    fn = [p for p in inspect.signature(FUNCTIONAL[name]).parameters.values() if p.kind != p.KEYWORD_ONLY]
    assert [(p.name, p.default) for p in fn] == [(p.name, p.default) for p in ref]


def test_namespaces():
    import adapters.timm as optim
    assert {"Lamb", "Lars", "NvNovoGrad"} <= set(optim.__all__)
    assert {"lamb", "lars", "nvnovograd"} <= set(fo.timm.__all__)
    assert fo.nvnovograd is fo.timm.nvnovograd  # torch has no NvNovoGrad: timm's at top level
    assert fo.lamb is fo.timm.lamb and fo.lars is fo.timm.lars  # torch has neither: timm's at top level
    assert fo.optax.lamb is not fo.lamb and fo.optax.lars is not fo.lars  # optax's compositions


@pytest.mark.parametrize("opt_name", sorted(REF["bad"]))
def test_bad_arguments_raise_timm_messages_naming_the_argument(opt_name):
    for kwargs, message in REF["bad"][opt_name]:
        with pytest.raises(ValueError) as ours:
            CLASSES[opt_name]([torch.nn.Parameter(torch.zeros(2))], **kwargs)
        text = str(ours.value)
        assert text.startswith(message), (kwargs, text)
        named = {"lr", "eps", "weight_decay", "momentum", "nesterov", "betas"} & set(kwargs)
        assert any(n in text[len(message):] for n in named), (kwargs, text)
        with pytest.raises(ValueError) as functional:
            FUNCTIONAL[opt_name](**kwargs)
        assert str(functional.value).startswith(message), (kwargs, str(functional.value))


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="max_grad_norm"):
        fo.timm.lamb(max_grad_norm=0.0)
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        Lamb([torch.nn.Parameter(torch.zeros(2))], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="betas must be a pair"):
        fo.timm.nvnovograd(betas=(0.9,))
    with pytest.raises(ValueError, match="trust_coeff"):
        fo.timm.lars(trust_coeff=-1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        NvNovoGrad([torch.nn.Parameter(torch.zeros(2))], weight_decay=-0.1)
    with pytest.raises(TypeError, match="caution must be a bool"):
        fo.timm.lamb(caution=1)
    with pytest.raises(TypeError, match="schedule"):
        fo.timm.lars(lr=lambda count: 0.1)
    with pytest.raises(ValueError, match="needs lr"):
        fo.scale_by_lars_trust_ratio(trust_clip=True)
    with pytest.raises(ValueError, match="needs params"):
        tx = fo.timm.lamb()
        tx.update([torch.ones(2)], tx.init([torch.ones(2)]))
    # a bad value in a param group is refused too (timm checks only the defaults)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        Lars([{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": -1.0}])


# -- pieces --------------------------------------------------------------------------------

def test_trust_ratio_branches_are_exercised():
    """The recorded cases cross the branches they are meant to: LARC's clip is active for
    some params and not others, LAMBC's for some, a zero param norm and a zero gradient."""
    p = [t.clone() for t in REF["params"]]
    g = REF["grads"][1]
    lars = fo.scale_by_lars_trust_ratio(trust_coeff=0.2, weight_decay=1e-2, trust_clip=True, lr=0.1)
    u, _ = lars.update(g, lars.init(p), p)
    ratios = [(ui.norm() / (gi + 1e-2 * pi).norm()).item() for ui, gi, pi in zip(u, g, p)]
    assert any(r == pytest.approx(1.0) for r in ratios[1:]) and any(r < 0.99 for r in ratios[1:])
    assert ratios[0] == pytest.approx(1.0)  # the bias starts at zero: ratio 1
    lamb = fo.scale_by_lamb_trust_ratio(trust_clip=True)
    u, _ = lamb.update(g, lamb.init(p), p)
    assert torch.equal(u[0], g[0])  # ||p|| == 0
    zero = [torch.zeros_like(t) for t in p]
    u, _ = lamb.update(zero, lamb.init(p), p)
    assert all(torch.equal(a, b) for a, b in zip(u, zero))  # ||u|| == 0: ratio 1, no NaN


def test_decoupled_weight_decay_values():
    p = {"w": torch.tensor([2.0, -4.0])}
    tx = fo.add_decoupled_weight_decay(0.1, 0.5)
    decay = tx.update({"w": torch.zeros(2)}, tx.init(p), p)[0]["w"]
    assert torch.equal(decay, p["w"] * (1 - 0.05) - p["w"])  # so p + decay rounds as p.mul_(1 - r)
    torch.testing.assert_close(decay, torch.tensor([-0.1, 0.2]), rtol=1e-6, atol=0)
    lr = torch.tensor(0.5)
    tx = fo.add_decoupled_weight_decay(0.1, lr, max_learning_rate=1.0)
    lr.fill_(0.25)  # read at every update: (0.25**2 / 1.0) * 0.1
    torch.testing.assert_close(tx.update({"w": torch.zeros(2)}, tx.init(p), p)[0]["w"],
                               torch.tensor([-0.0125, 0.025]))


def test_lamb_moments_use_the_common_step():
    """A leaf without a gradient keeps its moments, and is bias-corrected with the common
    step count when it comes back (timm's per-group ``step``)."""
    tx = fo.scale_by_lamb_moments(b1=0.5, b2=0.5, eps=0.0)
    params = [torch.zeros(1), torch.zeros(1)]
    state = tx.init(params)
    _, state = tx.update([torch.ones(1), None], state)
    assert int(state.count) == 1 and [int(c) for c in state.leaf_count] == [1, 0]
    u, state = tx.update([torch.ones(1), torch.full((1,), 2.0)], state)
    # leaf 1 at t=2: m = 0.5 * 2, v = 0.5 * 4; (m / 0.75) / (sqrt(v) / sqrt(0.75))
    expected = (1.0 / 0.75) / ((2.0 ** 0.5) / 0.75 ** 0.5)
    torch.testing.assert_close(u[1], torch.full((1,), expected), rtol=1e-15, atol=0)


def test_divide_by_global_norm():
    tx = fo.divide_by_global_norm(2.0)
    u, _ = tx.update([torch.tensor([3.0]), torch.tensor([4.0])], tx.init(None))
    assert torch.equal(u[0], torch.tensor([3.0]) / 2.5)
    u, _ = tx.update([torch.tensor([0.3]), torch.tensor([0.4])], tx.init(None))
    assert torch.equal(u[1], torch.tensor([0.4]))  # below the threshold: unchanged
    external = fo.divide_by_global_norm(None)
    u, _ = external.update([torch.tensor([3.0])], external.init(None))
    assert torch.equal(u[0], torch.tensor([3.0]))
    u, _ = external.update([torch.tensor([3.0])], external.init(None), clip_divisor=torch.tensor(3.0))
    assert torch.equal(u[0], torch.tensor([1.0]))


def test_differentiable_through_steps():
    """A hypergradient w.r.t. lr through three steps of each alias equals a finite difference."""
    gen = torch.Generator().manual_seed(5)
    x, y = torch.randn(8, 3, generator=gen), torch.randn(8, 2, generator=gen)

    def loss(p):
        return ((x @ p[0] + p[1] - y) ** 2).mean()

    def unrolled(make, lr):
        tx = make(lr)
        params = [torch.randn(3, 2, generator=torch.Generator().manual_seed(6)), torch.full((2,), 0.3)]
        state = tx.init(params)
        for _ in range(3):
            u, state = tx.update(torch.func.grad(loss)(params), state, params)
            params = fo.apply_updates(params, u)
        return loss(params)

    makes = [lambda lr: fo.timm.lamb(lr, weight_decay=0.05, caution=True, decoupled_decay=True,
                                     corrected_weight_decay=True, max_lr_snapshot=0.05),
             lambda lr: fo.timm.lars(lr, momentum=0.9, weight_decay=0.01, trust_coeff=0.5, trust_clip=True),
             lambda lr: fo.timm.nvnovograd(lr, weight_decay=0.01, decoupled_decay=True, amsgrad=True)]
    for make in makes:
        lr = torch.tensor(0.05)
        grad = torch.func.grad(lambda t: unrolled(make, t))(lr)
        h = 1e-6
        fd = (unrolled(make, torch.tensor(0.05 + h)) - unrolled(make, torch.tensor(0.05 - h))) / (2 * h)
        torch.testing.assert_close(grad, fd, rtol=1e-5, atol=1e-9)
        assert torch.isfinite(grad)
