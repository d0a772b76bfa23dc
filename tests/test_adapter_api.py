"""torch.optim.Optimizer behaviour of the adapter, against torch's classes where they have it.

Step hooks, ``step(closure)`` and the ``value`` it hands to transforms, ``zero_grad``
(both ``set_to_none`` settings; the compiled engine's kept grad views),
``add_param_group`` while training, and group hyperparameters changed between steps
(numbers, tensors, and changes that alter the transform's structure).
"""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch

import adapters
import functional_optim as fo
from adapter_harness import groups, leaves, make_grads, make_params, max_rel_diff, train

TOL = 1e-10
COMPILE = pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])


# -- hooks and closures ---------------------------------------------------------------

def test_step_hooks_run_in_order_and_can_replace_arguments():
    params = leaves(make_params())
    opt = adapters.Adam(params, lr=0.1)
    calls = []
    loss = torch.tensor(3.0)

    def closure():
        calls.append("closure")
        return loss

    def pre_a(o, args, kwargs):
        assert o is opt
        calls.append("pre_a")

    def pre_b(o, args, kwargs):  # hands the step a closure (args: the optimizer)
        calls.append("pre_b")
        assert args == (opt,) and kwargs == {}
        return args, {"closure": closure}

    def post(o, args, kwargs):
        calls.append(("post", kwargs.get("closure") is closure))

    handles = [opt.register_step_pre_hook(pre_a), opt.register_step_pre_hook(pre_b),
               opt.register_step_post_hook(post)]
    for p in params:
        p.grad = torch.ones_like(p)
    assert opt.step() is loss
    assert calls == ["pre_a", "pre_b", "closure", ("post", True)]
    for handle in handles:
        handle.remove()
    calls.clear()
    assert opt.step() is None and calls == []


class LastValueState(NamedTuple):
    """State of :func:`record_value`."""

    value: torch.Tensor  # 0-d float64: the ``value`` given to the last update


def record_value() -> fo.GradientTransformation:
    """Passes updates through and keeps the required ``value`` extra argument in state."""

    def init_fn(params):
        del params
        return LastValueState(value=torch.zeros((), dtype=torch.float64))

    def update_fn(updates, state, params=None, *, value, **extra):
        del params, extra, state
        return updates, LastValueState(value=torch.as_tensor(value).detach().to(torch.float64).reshape(()))

    return fo.GradientTransformation(init_fn, update_fn)


@COMPILE
def test_closure_loss_is_returned_and_reaches_transforms(compile):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    opt = adapters.FunctionalOptimizer(model.parameters(), fo.chain(record_value(), fo.sgd(0.1)),
                                       compile=compile)
    weight = model.weight.detach().clone()

    def closure():
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    for _ in range(3):
        loss = opt.step(closure)
        assert isinstance(loss, torch.Tensor) and loss.requires_grad
        assert opt.state[model.weight]["LastValueState.value"].item() == loss.item()
        assert opt.state[model.bias]["LastValueState.value"].item() == loss.item()
    assert not torch.equal(model.weight.detach(), weight)
    # a transform that needs the value fails loudly without a closure, changing nothing
    # (compiled: dynamo reports that update_fn's arguments cannot be bound)
    opt.zero_grad()
    model(x).sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(Exception, match="update_fn" if compile else "value") as error:
        opt.step()
    assert compile or error.type is TypeError
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))


# -- zero_grad ------------------------------------------------------------------------

@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad_eager(set_to_none):
    params = leaves(make_params())
    opt = adapters.SGD(params, lr=0.1)
    for p in params:
        p.grad = torch.ones_like(p)
    params[0].grad = None
    opt.zero_grad(set_to_none=set_to_none)
    assert params[0].grad is None
    for p in params[1:]:
        assert (p.grad is None) if set_to_none else torch.equal(p.grad, torch.zeros_like(p))


def _partial_backward_run(cls, set_to_none, **kwargs):
    # param `b` gets a gradient on the first two steps only: after zero_grad it has none
    # (set_to_none=True: torch skips it) or a zero one (False: torch still steps it)
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
    b = torch.nn.Parameter(torch.randn(2, dtype=torch.float64))
    c = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))
    opt = cls([{"params": [a, b]}, {"params": [c], "lr": 0.05}], lr=0.1, **kwargs)
    trajectory = []
    for step in range(5):
        opt.zero_grad(set_to_none=set_to_none)
        loss = (a ** 2).sum() + (c.sin().sum() if step != 3 else 0)
        if step < 2:
            loss = loss + (b ** 2).sum()
        loss.backward()
        opt.step()
        trajectory.append([a.detach().clone(), b.detach().clone(), c.detach().clone()])
    return trajectory, opt, (a, b, c)


@pytest.mark.parametrize("set_to_none", [True, False])
@COMPILE
def test_zero_grad_then_partial_backward_matches_torch(set_to_none, compile):
    ref, _, _ = _partial_backward_run(torch.optim.Adam, set_to_none)
    ours, _, _ = _partial_backward_run(adapters.Adam, set_to_none, compile=compile)
    assert max_rel_diff(ours, ref) <= TOL


def test_compiled_zero_grad_keeps_grad_views():
    params = leaves(make_params())
    opt = adapters.Adam(params, lr=0.1, compile=True)
    grads = make_grads(2, none_every=None)
    train(opt, params, grads)
    views = [p.grad for p in params]
    pointers = [g.data_ptr() for g in views]
    opt.zero_grad()  # set_to_none=True: the grads stay as zeroed views of the flat buffer
    for p, view, ptr in zip(params, views, pointers):
        assert p.grad is view and p.grad.data_ptr() == ptr
        assert torch.equal(p.grad, torch.zeros_like(p))
    # no backward reached any param: the step changes nothing, as torch skips None grads
    before = [p.detach().clone() for p in params]
    state = {k: v.clone() for k, v in opt.state[params[1]].items()}
    opt.step()
    assert all(torch.equal(x, p.detach()) for x, p in zip(before, params))
    assert all(torch.equal(v, opt.state[params[1]][k]) for k, v in state.items())


# -- param groups ------------------------------------------------------------------------

@COMPILE
def test_add_param_group_while_training_matches_torch(compile):
    grads = make_grads(24, none_every=None)

    def run(make, **kwargs):
        params = leaves(make_params())
        opt = make([{"params": params[:2]}, {"params": params[2:3], "weight_decay": 0.1}], lr=0.05, **kwargs)

        def add(step):
            if step == 8:  # fine-tuning unfreezes layers: new params, fresh state
                opt.add_param_group({"params": params[3:], "lr": 0.01, "betas": (0.8, 0.9)})
                assert opt.param_groups[-1]["eps"] == 1e-8  # the rest from the defaults

        trajectory = []
        for step, g in enumerate(grads):
            add(step)
            for i, p in enumerate(params):
                p.grad = None if (i >= 3 and step < 8) or g[i] is None else g[i].clone()
            opt.step()
            trajectory.append([p.detach().clone() for p in params])
        return trajectory, opt, params

    ref, ref_opt, _ = run(torch.optim.Adam)
    ours, opt, params = run(adapters.Adam, compile=compile)
    assert max_rel_diff(ours, ref) <= TOL
    assert len(opt.param_groups) == 3
    assert opt.state[params[3]]["step"].item() == ref_opt.state_dict()["state"][3]["step"].item()
    assert opt.state_dict()["param_groups"][2]["params"] == [3, 4]


# -- hyperparameters changed between steps -------------------------------------------------

def _changing_run(cls, changes, overrides, defaults, compile=None):
    grads = make_grads(30)
    params = leaves(make_params())
    kwargs = {} if compile is None else {"compile": compile}
    opt = cls(groups(params, overrides), **defaults, **kwargs)
    return train(opt, params, grads, before_step=lambda step: changes(opt, step)), opt


def adam_changes(opt, step):
    g0, g1, g2 = opt.param_groups
    g0["lr"] = 0.1 * 0.9 ** step  # a schedule, as a float
    if step == 5:
        g1["betas"] = (0.5, 0.99)
        g2["eps"] = 1e-3
    if step == 10:
        g0["weight_decay"] = 0.1  # 0 -> 0.1 adds a stage: rebuilt, state kept
    if step == 15:
        g1["lr"] = torch.tensor(0.02, dtype=torch.float64)  # float -> tensor
    if step > 15:
        g1["lr"].fill_(0.02 * 0.95 ** step)  # changed in place, as schedulers do
    if step == 20:
        g0["weight_decay"] = 0.0
        g2["maximize"] = True


def sgd_changes(opt, step):
    g0, g1, g2 = opt.param_groups
    g0["lr"] = 0.05 + 0.01 * (step % 3)
    if step == 6:
        g0["momentum"] = 0.0  # momentum off: torch keeps, and no longer uses, its buffer
        g1["weight_decay"] = 0.1
    if step == 12:
        g0["momentum"] = 0.9  # back on: the kept buffer continues
        g1["dampening"] = 0.3
    if step == 18:
        g2["momentum"] = 0.0
        g0["nesterov"] = True
    if step == 24:
        g2["momentum"] = 0.5


@COMPILE
@pytest.mark.parametrize("case", ["adam", "sgd"])
def test_hyperparameter_changes_take_effect_next_step(case, compile):
    if case == "adam":
        cls, ref_cls, changes = adapters.Adam, torch.optim.Adam, adam_changes
        overrides, defaults = [{}, dict(weight_decay=0.1), dict(amsgrad=True)], dict(lr=1e-2)
    else:
        cls, ref_cls, changes = adapters.SGD, torch.optim.SGD, sgd_changes
        overrides, defaults = [dict(momentum=0.9), dict(momentum=0.5), dict(momentum=0.9)], dict(lr=1e-2)
    ref, ref_opt = _changing_run(ref_cls, changes, overrides, defaults)
    ours, opt = _changing_run(cls, changes, overrides, defaults, compile)
    assert max_rel_diff(ours, ref) <= TOL
    if case == "sgd":  # every momentum buffer, exported as torch exports it
        for idx, entry in ref_opt.state_dict()["state"].items():
            ours_entry = opt.state_dict()["state"][idx]
            assert sorted(ours_entry) == sorted(entry)
            assert max_rel_diff([[ours_entry["momentum_buffer"]]], [[entry["momentum_buffer"]]]) <= TOL


def test_momentum_switched_off_keeps_torchs_buffer_in_state_dict():
    # while momentum is 0 torch still exports the buffer; ours does too, and a checkpoint
    # taken then continues identically in either library once momentum is back
    grads = make_grads(12, none_every=None)
    ref_params, params = leaves(make_params()), leaves(make_params())
    ref, ours = torch.optim.SGD(ref_params, lr=0.1, momentum=0.9), adapters.SGD(params, lr=0.1, momentum=0.9)
    for opt, ps in ((ref, ref_params), (ours, params)):
        train(opt, ps, grads[:4])
        opt.param_groups[0]["momentum"] = 0.0
        train(opt, ps, grads[4:6])
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert sorted(ours_sd["state"]) == sorted(ref_sd["state"]) == [0, 1, 2, 3, 4]
    for idx, entry in ref_sd["state"].items():
        assert max_rel_diff([[ours_sd["state"][idx]["momentum_buffer"]]], [[entry["momentum_buffer"]]]) <= TOL
    into_torch = torch.optim.SGD(leaves([p.detach() for p in params]), lr=0.1)
    into_torch.load_state_dict(ours_sd)
    into_torch.param_groups[0]["momentum"] = 0.9
    ref.param_groups[0]["momentum"] = 0.9
    moved = into_torch.param_groups[0]["params"]
    assert max_rel_diff(train(into_torch, moved, grads[6:]), train(ref, ref_params, grads[6:])) <= TOL


@COMPILE
def test_tensor_hyperparameters_match_torch(compile):
    # 0-d tensors, including a weight decay that starts at exactly zero and is changed in place
    def run(cls, **kwargs):
        lr = torch.tensor(0.05, dtype=torch.float64)
        wd = torch.tensor(0.0, dtype=torch.float64)
        params = leaves(make_params())
        opt = cls(groups(params, [{}, dict(weight_decay=wd), {}]), lr=lr, **kwargs)

        def change(step):
            lr.fill_(0.05 * 0.9 ** step)
            if step == 10:
                wd.fill_(0.2)

        return train(opt, params, make_grads(20), before_step=change)

    assert max_rel_diff(run(adapters.AdamW, compile=compile), run(torch.optim.AdamW)) <= TOL
