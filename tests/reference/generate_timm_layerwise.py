"""Record timm 1.0.31's ``Lamb``, ``Lars`` and ``NvNovoGrad`` trajectories for
``tests/test_timm_layerwise.py`` (run from ``tests/reference``: ``python generate_timm_layerwise.py``).

For each case (an optimizer, its keyword arguments and param groups) the script runs timm's
class for ``STEPS`` steps on float64 params of three shapes (a 1-D bias that starts at zero,
a 2-D matrix, a 4-D conv weight) with deterministic gradients from a fixed generator, and
saves the params after every step and the final ``state_dict``. It also records the
classes' signatures and timm's messages for bad arguments. Torch's default dtype is set to
float64 while recording: NvNovoGrad keeps its per-param second moment in the default dtype
and Lamb its group ``step``, so the recorded values are float64 throughout.

Output: ``timm_layerwise.pt`` (``torch.save`` of plain dicts, lists and tensors; loads
with ``weights_only=True``).
"""

from __future__ import annotations

import inspect
import os

import torch

from timm_shim import timm, timm_optim

STEPS = 6
SHAPES = [(6,), (5, 4), (3, 2, 3, 3)]
GRAD_SCALES = [0.3, 1.0, 3.0]  # unequal layer norms: trust ratios on both sides of their clips


def initial_params() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    params[0].zero_()  # a zero-initialised bias: the trust ratios' ||p|| == 0 branch at the first step
    return params


def make_grads() -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    grads = [[scale * torch.randn(s, generator=gen, dtype=torch.float64) for s, scale in zip(SHAPES, GRAD_SCALES)]
             for _ in range(STEPS)]
    grads[0][0].zero_()  # an exactly zero gradient: ||g|| == 0 branches, NvNovoGrad's v == 0 branch
    grads[2][1][0, 0] = 0.0
    return grads


# each case: optimizer, kwargs, param groups as (param indices, group options), the steps at
# which a param has no gradient (None), and lr changes {step: {group: lr}} applied before a step
def case(opt, kwargs, groups=(((0, 1, 2), {}),), none=(), lr_at=None):
    return dict(opt=opt, kwargs=kwargs, groups=[(list(i), dict(o)) for i, o in groups],
                none=[list(x) for x in none], lr_at={s: dict(v) for s, v in (lr_at or {}).items()})


CASES = {
    # -- Lamb ------------------------------------------------------------------------
    "lamb_default": case("Lamb", dict(lr=0.02)),
    "lamb_nowd_noclip_nobc": case("Lamb", dict(lr=0.02, weight_decay=0.0, max_grad_norm=None,
                                               bias_correction=False)),
    "lamb_always_adapt_trust_clip": case("Lamb", dict(lr=0.02, weight_decay=0.0, always_adapt=True,
                                                      trust_clip=True, max_grad_norm=5.0)),
    "lamb_no_averaging": case("Lamb", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-4, weight_decay=0.05,
                                           grad_averaging=False, max_grad_norm=2.0)),
    "lambw": case("Lamb", dict(lr=0.02, weight_decay=0.1, decoupled_decay=True)),
    "lambcd_lr_change": case("Lamb", dict(lr=0.02, weight_decay=0.1, decoupled_decay=True,
                                          corrected_weight_decay=True, trust_clip=True),
                             lr_at={3: {0: 0.005}}),
    "clamb": case("Lamb", dict(lr=0.02, caution=True, trust_clip=True)),
    "clambw": case("Lamb", dict(lr=0.02, weight_decay=0.05, caution=True, decoupled_decay=True,
                                max_grad_norm=None)),
    "lamb_two_groups": case("Lamb", dict(lr=0.02, weight_decay=0.05, max_grad_norm=0.5),
                            groups=(((0,), {"weight_decay": 0.0}), ((1, 2), {"lr": 0.03}))),
    "lamb_none_grad": case("Lamb", dict(lr=0.02, weight_decay=0.02), none=[(2, 0), (3, 0), (4, 2)]),
    # -- Lars ------------------------------------------------------------------------
    "lars_plain_sgd": case("Lars", dict(lr=0.1)),
    "lars_momentum_wd": case("Lars", dict(lr=0.5, momentum=0.9, weight_decay=1e-2)),
    "larc": case("Lars", dict(lr=0.1, momentum=0.9, weight_decay=1e-2, trust_coeff=0.2, trust_clip=True)),
    "nlars": case("Lars", dict(lr=0.5, momentum=0.9, weight_decay=1e-3, nesterov=True, trust_coeff=0.01)),
    "nlarc_lr_change": case("Lars", dict(lr=0.1, momentum=0.8, weight_decay=1e-2, nesterov=True,
                                         trust_coeff=0.2, trust_clip=True), lr_at={3: {0: 0.3}}),
    "lars_always_adapt_dampening": case("Lars", dict(lr=0.5, momentum=0.8, dampening=0.1, always_adapt=True,
                                                     eps=1e-3, trust_coeff=0.05)),
    "lars_none_grad": case("Lars", dict(lr=0.5, momentum=0.9, weight_decay=1e-2), none=[(0, 1), (2, 0), (3, 2)]),
    # -- NvNovoGrad ------------------------------------------------------------------
    "novograd_default": case("NvNovoGrad", dict(lr=0.01)),
    "novograd_wd_averaging_amsgrad": case("NvNovoGrad", dict(lr=0.02, betas=(0.5, 0.9), weight_decay=0.01,
                                                             grad_averaging=True, amsgrad=True)),
    "novogradw": case("NvNovoGrad", dict(lr=0.02, weight_decay=0.05, decoupled_decay=True)),
    "novogradc_lr_change": case("NvNovoGrad", dict(lr=0.02, weight_decay=0.05, decoupled_decay=True,
                                                   corrected_weight_decay=True, amsgrad=True),
                                lr_at={2: {0: 0.008}}),
    "novograd_none_grad": case("NvNovoGrad", dict(lr=0.02, weight_decay=0.01), none=[(1, 2), (2, 0), (4, 1)]),
}

BAD = {  # timm's messages for invalid arguments
    "Lamb": [dict(lr=-1e-3), dict(eps=-1.0), dict(weight_decay=-0.1),
             dict(lr=0.0, decoupled_decay=True, corrected_weight_decay=True)],
    "Lars": [dict(lr=-0.1), dict(momentum=-0.5), dict(weight_decay=-0.1), dict(nesterov=True),
             dict(nesterov=True, momentum=0.9, dampening=0.1)],
    "NvNovoGrad": [dict(lr=-1e-3), dict(eps=-1.0), dict(betas=(1.0, 0.98)), dict(betas=(0.9, -0.5)),
                   dict(lr=0.0, corrected_weight_decay=True)],
}


def run(spec: dict, params0: list[torch.Tensor], grads: list[list[torch.Tensor]]) -> dict:
    cls = getattr(timm_optim, spec["opt"])
    params = [torch.nn.Parameter(p.clone()) for p in params0]
    groups = [{"params": [params[i] for i in idx], **opts} for idx, opts in spec["groups"]]
    opt = cls(groups, **spec["kwargs"])
    trajectory = []
    for step, g in enumerate(grads):
        for group, lr in spec["lr_at"].get(step, {}).items():
            opt.param_groups[group]["lr"] = lr
        missing = {i for s, i in spec["none"] if s == step}
        for i, (p, gi) in enumerate(zip(params, g)):
            p.grad = None if i in missing else gi.clone()
        opt.step()
        trajectory.append([p.detach().clone() for p in params])
    return dict(spec, trajectory=trajectory, state_dict=opt.state_dict())


def main() -> None:
    torch.set_default_dtype(torch.float64)
    params0, grads = initial_params(), make_grads()
    cases = {name: run(spec, params0, grads) for name, spec in CASES.items()}
    bad = {}
    for name, kwargs_list in BAD.items():
        cls = getattr(timm_optim, name)
        bad[name] = []
        for kwargs in kwargs_list:
            try:
                cls([torch.nn.Parameter(torch.zeros(2))], **kwargs)
            except ValueError as err:
                bad[name].append((kwargs, str(err)))
            else:
                raise AssertionError(f"timm accepted {name}({kwargs})")
    out = dict(
        timm_version=timm.__version__, steps=STEPS, params=params0, grads=grads, cases=cases, bad=bad,
        signatures={name: str(inspect.signature(getattr(timm_optim, name)))
                    for name in ("Lamb", "Lars", "NvNovoGrad")},
    )
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "timm_layerwise.pt")
    torch.save(out, path)
    print(f"wrote {path} ({os.path.getsize(path)} bytes, {len(cases)} cases, timm {timm.__version__})")


if __name__ == "__main__":
    main()
