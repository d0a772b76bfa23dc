"""The adapter with torch's training machinery: LR schedulers, GradScaler, gradient
clipping and a torch.compiled model, each run side by side with torch's optimizer."""

from __future__ import annotations

import pytest
import torch
from torch.optim import lr_scheduler as S

import adapters
from adapter_harness import groups, leaves, make_grads, make_params, max_rel_diff, train

TOL = 1e-10
STEPS = 30

SCHEDULERS = {
    "StepLR": lambda opt: S.StepLR(opt, step_size=5, gamma=0.5),
    "MultiStepLR": lambda opt: S.MultiStepLR(opt, milestones=[4, 9, 15], gamma=0.3),
    "CosineAnnealingLR": lambda opt: S.CosineAnnealingLR(opt, T_max=STEPS, eta_min=1e-4),
    "OneCycleLR": lambda opt: S.OneCycleLR(opt, max_lr=[0.1, 0.05, 0.2], total_steps=STEPS),
    "LambdaLR": lambda opt: S.LambdaLR(opt, [lambda e: 0.95 ** e, lambda e: 1 / (1 + e), lambda e: 1.0]),
    "SequentialLR": lambda opt: S.SequentialLR(opt, [S.LinearLR(opt, start_factor=0.1, total_iters=5),
                                                     S.ExponentialLR(opt, gamma=0.9)], milestones=[5]),
    "ReduceLROnPlateau": lambda opt: S.ReduceLROnPlateau(opt, factor=0.5, patience=1, threshold=0.05),
}
OPTIMIZERS = {  # OneCycleLR also cycles Adam's beta1 and SGD's momentum
    "adam": (adapters.Adam, torch.optim.Adam, [dict(lr=0.1), dict(weight_decay=0.1), dict(amsgrad=True)]),
    "sgd": (adapters.SGD, torch.optim.SGD, [dict(lr=0.1), dict(weight_decay=0.1), dict(nesterov=True)]),
}


def scheduled_run(cls, overrides, make_scheduler, grads):
    params = leaves(make_params())
    kwargs = dict(lr=1e-2, momentum=0.9) if cls in (adapters.SGD, torch.optim.SGD) else dict(lr=1e-2)
    opt = cls(groups(params, overrides), **kwargs)
    scheduler = make_scheduler(opt)
    lrs = []

    def schedule(step):
        if isinstance(scheduler, S.ReduceLROnPlateau):
            scheduler.step(sum(p.detach().pow(2).sum() for p in params).item())  # a loss
        else:
            scheduler.step()
        lrs.append([g["lr"] for g in opt.param_groups])

    return train(opt, params, grads, after_step=schedule), lrs, scheduler


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_scheduler_same_trajectory_as_torch(name, optimizer):
    ours_cls, torch_cls, overrides = OPTIMIZERS[optimizer]
    grads = make_grads(STEPS)
    ref, ref_lrs, ref_sched = scheduled_run(torch_cls, overrides, SCHEDULERS[name], grads)
    ours, lrs, sched = scheduled_run(ours_cls, overrides, SCHEDULERS[name], grads)
    assert lrs == ref_lrs and len({tuple(x) for x in lrs}) > 2  # the schedule did change the lr
    assert max_rel_diff(ours, ref) <= TOL
    assert sched.state_dict().keys() == ref_sched.state_dict().keys()


def test_scheduler_on_tensor_lr():
    # a 0-d tensor lr is updated in place by the scheduler (fill_), as in torch. float64:
    # torch computes lr / bias_correction in the lr tensor's dtype, ours in float64 (with a
    # float32 lr tensor the two differ by float32 rounding, ~1e-7 relative)
    grads = make_grads(STEPS)

    def run(cls):
        params = leaves(make_params())
        opt = cls(params, lr=torch.tensor(0.05, dtype=torch.float64))
        lr = opt.param_groups[0]["lr"]
        sched = S.CosineAnnealingLR(opt, T_max=10)
        out = train(opt, params, grads, after_step=lambda step: sched.step())
        assert opt.param_groups[0]["lr"] is lr
        return out

    assert max_rel_diff(run(adapters.AdamW), run(torch.optim.AdamW)) <= TOL


def _model(dtype=torch.float64):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).to(dtype)


def _batches(n, dtype=torch.float64):
    gen = torch.Generator().manual_seed(3)
    return [(torch.randn(16, 4, generator=gen, dtype=dtype), torch.randn(16, 2, generator=gen, dtype=dtype))
            for _ in range(n)]


INF_STEPS = (0, 5)  # forced inf gradients: the first step (grads not yet gathered) and a later one


def amp_run(make_opt, steps=12):
    """GradScaler + unscale_ + clip_grad_norm_ + scaler.step; inf grads forced on INF_STEPS."""
    model = _model()
    opt = make_opt(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=3)
    trajectory, scales, skipped = [], [], []
    for step, (x, y) in enumerate(_batches(steps)):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        if step in INF_STEPS:
            model[0].weight.grad[1, 2] = float("inf")
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5)
        before = [p.detach().clone() for p in model.parameters()]
        state = {i: {k: v.clone() for k, v in opt.state[p].items() if isinstance(v, torch.Tensor)}
                 for i, p in enumerate(model.parameters())}
        scaler.step(opt)
        scaler.update()
        params = list(model.parameters())
        unchanged = all(torch.equal(a, p.detach()) for a, p in zip(before, params)) and all(
            torch.equal(v, opt.state[p][k]) for i, p in enumerate(params) for k, v in state[i].items())
        skipped.append(unchanged)
        scales.append(scaler.get_scale())
        trajectory.append([p.detach().clone() for p in model.parameters()])
    return trajectory, scales, skipped


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_grad_scaler_skips_inf_steps_like_torch(compile):
    ref, ref_scales, ref_skipped = amp_run(lambda m: torch.optim.AdamW(m.parameters(), lr=0.05))
    ours, scales, skipped = amp_run(lambda m: adapters.AdamW(m.parameters(), lr=0.05, compile=compile))
    assert [i for i, s in enumerate(ref_skipped) if s] == list(INF_STEPS)
    assert skipped == ref_skipped and scales == ref_scales
    assert max_rel_diff(ours, ref) <= TOL


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_compiled_model_with_our_optimizer(compile):
    # torch.compile(model): compiled forward and backward produce the grads the optimizer reads
    def run(make_opt):
        model = _model()
        opt = make_opt(model)  # before compiling: the flat engine re-points params first
        compiled = torch.compile(model)
        trajectory = []
        for x, y in _batches(8):
            opt.zero_grad()
            torch.nn.functional.mse_loss(compiled(x), y).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
            opt.step()
            trajectory.append([p.detach().clone() for p in model.parameters()])
        return trajectory

    ref = run(lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True))
    ours = run(lambda m: adapters.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True, compile=compile))
    assert max_rel_diff(ours, ref) <= TOL
