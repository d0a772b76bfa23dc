"""adapters.ScheduleLR and MONAI's scheduler classes: reference values, torch's schedulers,
torch and functional optimizers, multipliers, tensor lrs, checkpoints, errors."""

from __future__ import annotations

import io

import pytest
import torch

import functional_optim as fo
from adapters import ExponentialLR, FunctionalOptimizer, LinearLR, ScheduleLR, WarmupCosineSchedule
from schedule_refs import CASES, MONAI_CASES, OPTAX_CASES, STEPS, assert_matches, build

MONAI_CLASSES = {"WarmupCosineSchedule": WarmupCosineSchedule, "LinearLR": LinearLR, "ExponentialLR": ExponentialLR}


def _param():
    return torch.zeros(2, dtype=torch.float64, requires_grad=True)


def _lrs(opt, scheduler, steps, group=0):
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[group]["lr"])
        opt.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("name", OPTAX_CASES)
def test_schedule_lr_follows_every_reference_schedule(name):
    opt = torch.optim.SGD([_param()], lr=123.0)  # absolute mode: the initial lr is ignored
    assert_matches(_lrs(opt, ScheduleLR(opt, build(name)), STEPS), name)


@pytest.mark.parametrize("optimizer", ["torch", "functional"])
@pytest.mark.parametrize("name", MONAI_CASES)
def test_monai_classes_reproduce_monai(name, optimizer):
    spec = CASES[name]["monai"]
    params = [_param()]
    opt = (torch.optim.SGD(params, lr=spec["base_lr"]) if optimizer == "torch"
           else FunctionalOptimizer(params, fo.sgd, lr=spec["base_lr"]))
    scheduler = MONAI_CLASSES[spec["cls"]](opt, **spec["kwargs"])
    assert_matches(_lrs(opt, scheduler, STEPS), name)


def test_monai_classes_use_each_groups_base_lr():
    opt = torch.optim.SGD([{"params": [_param()], "lr": 0.1}, {"params": [_param()], "lr": 0.02}])
    scheduler = WarmupCosineSchedule(opt, warmup_steps=5, t_total=40, end_lr=1e-3, warmup_multiplier=0.2)
    lrs0, lrs1 = [], []
    for _ in range(60):
        lrs0.append(opt.param_groups[0]["lr"]), lrs1.append(opt.param_groups[1]["lr"])
        opt.step()
        scheduler.step()
    for base, got in ((0.1, lrs0), (0.02, lrs1)):
        expected = fo.warmup_cosine_schedule(base, 5, 40, end_lr=1e-3, warmup_multiplier=0.2)
        assert got == [expected(t) for t in range(60)]
    assert scheduler.get_lr() == [opt.param_groups[0]["lr"], opt.param_groups[1]["lr"]]  # MONAI's LR finder reads it


TORCH_EQUIVALENTS = [  # (torch scheduler, our schedule, as_multiplier, steps)
    (lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=100, eta_min=1e-3),
     fo.cosine_decay_schedule(0.1, 100, alpha=0.01), False, 101),
    (lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=30, gamma=0.3),
     fo.exponential_decay(0.1, 30, 0.3, staircase=True), False, 200),
    (lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.97),
     fo.exponential_decay(0.1, 1, 0.97), False, 300),
    (lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[30, 80], gamma=0.5),
     fo.piecewise_constant_schedule(0.1, {30: 0.5, 80: 0.5}), False, 150),
    (lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=50),
     fo.linear_schedule(0.1, 1.0, 50), True, 120),
    (lambda o: torch.optim.lr_scheduler.PolynomialLR(o, total_iters=80, power=1.0),
     fo.polynomial_schedule(0.1, 0.0, 1.0, 80), False, 120),
    (lambda o: torch.optim.lr_scheduler.ConstantLR(o, factor=0.5, total_iters=10),
     fo.piecewise_constant_schedule(0.5, {10: 2.0}), True, 40),
]


@pytest.mark.parametrize("case", range(len(TORCH_EQUIVALENTS)),
                         ids=["cosine", "step", "exponential", "multistep", "linear", "polynomial", "constant"])
def test_reproduces_torch_schedulers(case):
    make_torch, schedule, as_multiplier, steps = TORCH_EQUIVALENTS[case]
    opt_t = torch.optim.SGD([_param()], lr=0.1)
    opt_f = torch.optim.SGD([_param()], lr=0.1)
    expected = _lrs(opt_t, make_torch(opt_t), steps)
    got = _lrs(opt_f, ScheduleLR(opt_f, schedule, as_multiplier=as_multiplier), steps)
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-12, atol=1e-15)


def test_multiplier_mode_equals_lambda_lr():
    sched = fo.warmup_cosine_decay_schedule(0.0, 1.0, 10, 100, end_value=0.05)
    opt_a = torch.optim.SGD([{"params": [_param()], "lr": 0.5}, {"params": [_param()], "lr": 0.05}])
    opt_b = torch.optim.SGD([{"params": [_param()], "lr": 0.5}, {"params": [_param()], "lr": 0.05}])
    ours = ScheduleLR(opt_a, sched, as_multiplier=True)
    torchs = torch.optim.lr_scheduler.LambdaLR(opt_b, sched)
    for _ in range(120):
        assert [g["lr"] for g in opt_a.param_groups] == [g["lr"] for g in opt_b.param_groups]
        opt_a.step(), opt_b.step()
        ours.step(), torchs.step()
    assert ours.get_last_lr() == torchs.get_last_lr()


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_driving_an_optimizer_equals_the_scheduled_functional_chain(kind):
    """ScheduleLR on a torch optimizer and on FunctionalOptimizer gives the trajectory of the
    pure functional alias with the schedule as its lr (count 0 at the first step)."""
    sched = fo.warmup_cosine_decay_schedule(1e-3, 0.05, warmup_steps=5, decay_steps=40, end_value=1e-3)
    gen = torch.Generator().manual_seed(1)
    init = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    grads = [torch.randn(4, 3, generator=gen, dtype=torch.float64) for _ in range(50)]
    torch_cls, alias, extra = ((torch.optim.SGD, fo.sgd, dict(momentum=0.9)) if kind == "sgd"
                               else (torch.optim.Adam, fo.adam, dict(weight_decay=0.01)))
    tx = alias(lr=sched, **extra)
    p_ref, state = init.clone(), None
    state = tx.init(p_ref)
    for g in grads:
        u, state = tx.update(g, state, p_ref)
        p_ref = fo.apply_updates(p_ref, u)
    for make in (lambda ps: torch_cls(ps, lr=1.0, **extra), lambda ps: FunctionalOptimizer(ps, alias, lr=1.0, **extra)):
        p = init.clone().requires_grad_(True)
        opt = make([p])
        scheduler = ScheduleLR(opt, sched)
        for g in grads:
            p.grad = g.clone()
            opt.step()
            scheduler.step()
        torch.testing.assert_close(p.detach(), p_ref, rtol=1e-12, atol=1e-14)


def test_tensor_lr_is_filled_in_place():
    lr = torch.tensor(0.1, dtype=torch.float64)
    opt = torch.optim.SGD([_param()], lr=lr)
    scheduler = ScheduleLR(opt, fo.exponential_decay(0.2, 1, 0.5))
    opt.step(), scheduler.step()
    assert opt.param_groups[0]["lr"] is lr and float(lr) == 0.1


def test_state_dict_round_trip_resumes_exactly():
    sched = fo.cosine_onecycle_schedule(100, 0.3)
    opt = torch.optim.SGD([_param()], lr=0.1)
    scheduler = ScheduleLR(opt, sched)
    _lrs(opt, scheduler, 37)
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)  # no closures inside: picklable
    buffer.seek(0)
    opt2 = torch.optim.SGD([_param()], lr=0.1)
    opt2.load_state_dict(opt.state_dict())
    resumed = ScheduleLR(opt2, sched)
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    resumed.step()
    scheduler.step()
    assert resumed.last_epoch == 38 and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == sched(38)

    mopt = torch.optim.SGD([_param()], lr=0.1)
    monai = WarmupCosineSchedule(mopt, 10, 100, end_lr=1e-3)
    _lrs(mopt, monai, 20)
    mopt2 = torch.optim.SGD([_param()], lr=0.5)
    monai2 = WarmupCosineSchedule(mopt2, 1, 2)
    monai2.load_state_dict(monai.state_dict())  # settings and base lrs come from the checkpoint
    monai.step(), monai2.step()
    assert mopt2.param_groups[0]["lr"] == mopt.param_groups[0]["lr"]


@pytest.mark.parametrize("call,error,match", [
    (lambda o: ScheduleLR(o, 0.1), TypeError, "schedule must be callable"),
    (lambda o: ScheduleLR(o, [fo.constant_schedule(0.1)] * 2), ValueError, "one per param group"),
    (lambda o: ScheduleLR(o, fo.constant_schedule(0.1), as_multiplier="yes"), TypeError, "as_multiplier"),
    (lambda o: ScheduleLR(object(), fo.constant_schedule(0.1)), TypeError, "optimizer"),
    (lambda o: WarmupCosineSchedule(o, 5, 10, warmup_multiplier=2), ValueError, "warmup_multiplier"),
    (lambda o: LinearLR(o, end_lr=1.0, num_iter=1), ValueError, "num_iter"),
    (lambda o: ExponentialLR(o, end_lr=-1.0, num_iter=10), ValueError, "end_lr"),
])
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call(torch.optim.SGD([_param()], lr=0.1))
