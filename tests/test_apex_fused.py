"""apex's fused optimizers (``fo.apex.*``, ``adapters.apex``) against per-tensor reference
implementations written here from apex's CUDA kernels (NVIDIA/apex, ``csrc/``), in float64.

apex cannot run here (CUDA only), so the references below restate its kernels' per-element
math, one Python loop per tensor, in the kernels' order of operations; each cites the
file and lines it follows. Trajectories of several steps over params of several shapes
(a matrix, a vector, a 0-d scalar), with a step where one param has no gradient, must
match to 1e-12 relative in float64 (measured: at most 2.2e-16, functional and class).

The flat compiled engine is exercised through the conformance registry's entries
(``scale_by_apex_moments``, ``scale_by_apex_novograd``, whose samples are the ``fo.apex``
aliases): ``tests/test_adapter_flat.py`` runs each on padded flat buffers eagerly and the
``PER_PARAM`` ones (``fused_lamb``, ``fused_novograd``) through ``FunctionalOptimizer(...,
compile=True)`` against the per-param engine.
"""

from __future__ import annotations

import math

import pytest
import torch

import functional_optim as fo
from adapters.apex import FusedAdam, FusedLAMB, FusedNovoGrad, FusedSGD

TOL = 1e-12
STEPS = 6
SHAPES = [(3, 4), (5,), ()]
NO_GRAD = {3: 1}  # on step 3, param 1 has no gradient


def _problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES] for _ in range(STEPS)]
    for t, i in NO_GRAD.items():
        grads[t][i] = None
    return params, grads


# -- references, one tensor at a time (apex's kernels) --------------------------------------

def ref_adam(params, grads, lr, bias_correction, betas, eps, adam_w_mode, weight_decay):
    # csrc/multi_tensor_adam.cu (apex commit 004da4e): AdamFunctor's ADAM_MODE_0 (L2) and
    # ADAM_MODE_1 (decoupled) branches, and multi_tensor_adam_cuda's bias corrections
    # 1 - beta**step; apex/optimizers/fused_adam.py, FusedAdam.step: the step is the group's
    # (group['step'] += 1 before the param loop, whatever the grads)
    b1, b2 = betas
    p = [x.clone() for x in params]
    m = [None] * len(p)
    v = [None] * len(p)
    out = []
    for t, gs in enumerate(grads, 1):
        bc1, bc2 = (1 - b1 ** t, 1 - b2 ** t) if bias_correction else (1.0, 1.0)
        for i, g in enumerate(gs):
            if g is None:
                continue
            if m[i] is None:
                m[i], v[i] = torch.zeros_like(p[i]), torch.zeros_like(p[i])
            g = g.clone()
            if not adam_w_mode:
                g = g + weight_decay * p[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            denom = torch.sqrt(v[i] / bc2) + eps
            update = (m[i] / bc1) / denom
            if adam_w_mode:
                update = update + weight_decay * p[i]
            p[i] = p[i] - lr * update
        out.append([x.clone() for x in p])
    return out, m, v


def ref_lamb(params, grads, lr, bias_correction, betas, eps, weight_decay, adam_w_mode, grad_averaging,
             max_grad_norm, use_nvlamb):
    # apex/optimizers/fused_lamb.py (commit 16fadfe), FusedLAMB.step: one global norm of the
    # grads of every group, clipped with self.defaults["max_grad_norm"]; csrc/multi_tensor_lamb.cu
    # (commit 06a83ce), multi_tensor_lamb_cuda: per-tensor param norms before stage 1,
    # LAMBStage1Functor (clip divisor, MOMENT_MODE_0/1, bias corrections, beta3), the update
    # norms, LAMBStage2Functor (ratio = lr * pn / un where use_nvlamb or decay != 0)
    b1, b2 = betas
    b3 = 1 - b1 if grad_averaging else 1.0
    p = [x.clone() for x in params]
    m = [None] * len(p)
    v = [None] * len(p)
    out = []
    for t, gs in enumerate(grads, 1):
        global_norm = math.sqrt(sum(float((g * g).sum()) for g in gs if g is not None))
        clip = global_norm / max_grad_norm if global_norm > max_grad_norm else 1.0
        bc1, bc2 = (1 - b1 ** t, 1 - b2 ** t) if bias_correction else (1.0, 1.0)
        for i, g in enumerate(gs):
            if g is None:
                continue
            if m[i] is None:
                m[i], v[i] = torch.zeros_like(p[i]), torch.zeros_like(p[i])
            param_norm = float(torch.linalg.vector_norm(p[i]))
            scaled = g / clip
            if not adam_w_mode:
                scaled = scaled + weight_decay * p[i]
            m[i] = m[i] * b1 + b3 * scaled
            v[i] = v[i] * b2 + (1 - b2) * scaled * scaled
            update = (m[i] / bc1) / (torch.sqrt(v[i] / bc2) + eps)
            if adam_w_mode:
                update = update + weight_decay * p[i]
            update_norm = float(torch.linalg.vector_norm(update))
            ratio = lr
            if use_nvlamb or weight_decay != 0:
                ratio = lr * (param_norm / update_norm) if update_norm != 0 and param_norm != 0 else lr
            p[i] = p[i] - ratio * update
        out.append([x.clone() for x in p])
    return out, m, v


def ref_sgd(params, grads, lr, momentum, dampening, weight_decay, nesterov, wd_after_momentum):
    # csrc/multi_tensor_sgd_kernel.cu (commit 070c7e9), SGDFunctor: decay before (or after,
    # wd_after_momentum) the momentum, first_run sets the buffer to the gradient;
    # apex/optimizers/fused_sgd.py (commit 00dbe4b), FusedSGD.get_momentums: first_run for
    # params without a momentum_buffer
    p = [x.clone() for x in params]
    buf = [None] * len(p)
    out = []
    for gs in grads:
        for i, g in enumerate(gs):
            if g is None:
                continue
            g = g.clone()
            if weight_decay != 0 and not wd_after_momentum:
                g = g + weight_decay * p[i]
            if momentum != 0:
                buf[i] = g.clone() if buf[i] is None else buf[i] * momentum + (1 - dampening) * g
                g = g + momentum * buf[i] if nesterov else buf[i]
            if weight_decay != 0 and wd_after_momentum:
                g = g + weight_decay * p[i]
            p[i] = p[i] + (-lr * g)
        out.append([x.clone() for x in p])
    return out, buf


def ref_novograd(params, grads, lr, bias_correction, betas, eps, weight_decay, reg_inside_moment,
                 grad_averaging, norm_type, init_zero):
    # apex/optimizers/fused_novograd.py (commit 007c594), FusedNovoGrad.step: group['exp_avg_sq']
    # starts at the first step's norms (0 with init_zero); csrc/multi_tensor_novograd.cu
    # (commit 14db5c2), multi_tensor_novograd_cuda: 1 - b1**t and sqrt(1 - b2**t), beta3, the
    # norm blend of multi_tensor_norm_out_cuda (csrc/multi_tensor_l2norm_kernel.cu, cleanup_v2:
    # sqrt(a n0^2 + b sum g^2), or a n0 + b max|g|), NovoGradFunctor (MOMENT_MODE_0 =
    # reg_inside_moment)
    b1, b2 = betas
    b3 = 1 - b1 if grad_averaging else 1.0
    p = [x.clone() for x in params]
    m = [None] * len(p)
    norms = [None] * len(p)
    out = []
    for t, gs in enumerate(grads, 1):
        bc1, bc2 = (1 - b1 ** t, math.sqrt(1 - b2 ** t)) if bias_correction else (1.0, 1.0)
        for i, g in enumerate(gs):
            if g is None:
                continue
            if m[i] is None:
                m[i] = torch.zeros_like(p[i])
            n = float(g.abs().max()) if norm_type == 0 else float((g * g).sum())
            if norms[i] is None:
                norms[i] = 0.0 if init_zero else (n if norm_type == 0 else math.sqrt(n))
            if norm_type == 0:
                norms[i] = b2 * norms[i] + (1 - b2) * n
            else:
                norms[i] = math.sqrt(b2 * norms[i] * norms[i] + (1 - b2) * n)
            denom = norms[i] / bc2 + eps
            if reg_inside_moment:
                g = g / denom + weight_decay * p[i]
                m[i] = b1 * m[i] + b3 * g
                p[i] = p[i] - lr * (m[i] / bc1)
            else:
                m[i] = b1 * m[i] + b3 * g
                update = (m[i] / bc1) / denom + weight_decay * p[i]
                p[i] = p[i] - lr * update
        out.append([x.clone() for x in p])
    return out, m, norms


# -- running ours -------------------------------------------------------------------------

def run_functional(tx, params, grads):
    params = list(params)
    state = tx.init(params)
    out = []
    for gs in grads:
        updates, state = tx.update(list(gs), state, params)
        params = fo.apply_updates(params, updates)
        out.append([x.clone() for x in params])
    return out, state


def run_class(make, params, grads):
    ps = [torch.nn.Parameter(x.clone()) for x in params]
    opt = make(ps)
    out = []
    for gs in grads:
        for p, g in zip(ps, gs):
            p.grad = None if g is None else g.clone()
        opt.step()
        out.append([p.detach().clone() for p in ps])
    return out, opt, ps


def assert_close(ours, ref, tol=TOL):
    for step, (a, b) in enumerate(zip(ours, ref)):
        for i, (x, y) in enumerate(zip(a, b)):
            scale = max(1.0, float(y.abs().max()) if y.numel() else 1.0)
            err = float((x - y).abs().max()) / scale if x.numel() else 0.0
            assert err <= tol, f"step {step}, param {i}: relative error {err:.3g} > {tol}"


ADAM_CASES = {
    "adamw_default": dict(lr=1e-2, bias_correction=True, betas=(0.9, 0.999), eps=1e-8, adam_w_mode=True,
                          weight_decay=0.0),
    "adamw_decay": dict(lr=5e-2, bias_correction=True, betas=(0.8, 0.99), eps=1e-6, adam_w_mode=True,
                        weight_decay=0.1),
    "adam_l2_no_bias_correction": dict(lr=1e-2, bias_correction=False, betas=(0.9, 0.95), eps=1e-3,
                                       adam_w_mode=False, weight_decay=0.05),
}
LAMB_CASES = {
    "default": dict(lr=1e-2, bias_correction=True, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01,
                    adam_w_mode=True, grad_averaging=True, max_grad_norm=1.0, use_nvlamb=False),
    "l2_no_averaging_clip_large": dict(lr=2e-2, bias_correction=True, betas=(0.8, 0.99), eps=1e-6,
                                       weight_decay=0.1, adam_w_mode=False, grad_averaging=False,
                                       max_grad_norm=100.0, use_nvlamb=False),
    "nvlamb_no_decay_no_bias_correction": dict(lr=1e-2, bias_correction=False, betas=(0.9, 0.999), eps=1e-6,
                                               weight_decay=0.0, adam_w_mode=True, grad_averaging=True,
                                               max_grad_norm=0.5, use_nvlamb=True),
    "no_decay_no_ratio": dict(lr=1e-2, bias_correction=True, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0,
                              adam_w_mode=True, grad_averaging=True, max_grad_norm=1.0, use_nvlamb=False),
}
SGD_CASES = {
    "nesterov_wd": dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.01, nesterov=True,
                        wd_after_momentum=False),
    "dampening_wd_after": dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.1, nesterov=False,
                               wd_after_momentum=True),
    "plain_wd_after": dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.1, nesterov=False,
                           wd_after_momentum=True),
}
NOVOGRAD_CASES = {
    "timm_betas": dict(lr=1e-2, bias_correction=True, betas=(0.95, 0.98), eps=1e-8, weight_decay=0.0,
                       reg_inside_moment=False, grad_averaging=True, norm_type=2, init_zero=False),
    "decay_inside_moment_inf_norm": dict(lr=1e-2, bias_correction=True, betas=(0.9, 0.999), eps=1e-8,
                                         weight_decay=0.01, reg_inside_moment=True, grad_averaging=True,
                                         norm_type=0, init_zero=False),
    "init_zero_no_averaging_no_bc": dict(lr=1e-2, bias_correction=False, betas=(0.9, 0.99), eps=1e-6,
                                         weight_decay=0.05, reg_inside_moment=False, grad_averaging=False,
                                         norm_type=2, init_zero=True),
    "init_zero_inf_norm_bc": dict(lr=1e-2, bias_correction=True, betas=(0.9, 0.9), eps=1e-8,
                                  weight_decay=0.0, reg_inside_moment=True, grad_averaging=True,
                                  norm_type=0, init_zero=True),
}


@pytest.mark.parametrize("case", ADAM_CASES)
def test_fused_adam_equals_apex_kernel(case):
    kw = ADAM_CASES[case]
    params, grads = _problem(1)
    ref, m, v = ref_adam(params, grads, **kw)
    ours, state = run_functional(fo.apex.fused_adam(**kw), params, grads)
    assert_close(ours, ref)
    cls, opt, ps = run_class(lambda ps: FusedAdam(ps, **kw), params, grads)
    assert_close(cls, ref)
    sd = opt.state_dict()
    assert sd["param_groups"][0]["step"] == STEPS and isinstance(sd["param_groups"][0]["step"], int)
    assert sorted(sd["state"][0]) == ["exp_avg", "exp_avg_sq"]
    assert_close([[sd["state"][i]["exp_avg"] for i in range(3)]], [m])
    assert_close([[sd["state"][i]["exp_avg_sq"] for i in range(3)]], [v])


@pytest.mark.parametrize("case", LAMB_CASES)
def test_fused_lamb_equals_apex_kernel(case):
    kw = LAMB_CASES[case]
    params, grads = _problem(2)
    ref, m, v = ref_lamb(params, grads, **kw)
    ours, _ = run_functional(fo.apex.fused_lamb(**kw), params, grads)
    assert_close(ours, ref)
    cls, opt, _ = run_class(lambda ps: FusedLAMB(ps, **kw), params, grads)
    assert_close(cls, ref)
    assert opt.state_dict()["param_groups"][0]["step"] == STEPS


def test_fused_lamb_clips_with_the_norm_over_every_group():
    # apex computes one global norm over all groups and clips with defaults['max_grad_norm']
    kw = LAMB_CASES["default"]
    params, grads = _problem(3)
    grads = [[g * 3 if g is not None else None for g in gs] for gs in grads]  # norms > 1: clipped
    ref, _, _ = ref_lamb(params, grads, **kw)
    ps = [torch.nn.Parameter(x.clone()) for x in params]
    opt = FusedLAMB([{"params": ps[:1]}, {"params": ps[1:], "max_grad_norm": 1e6}], **kw)
    for gs in grads:
        for p, g in zip(ps, gs):
            p.grad = None if g is None else g.clone()
        opt.step()
    assert_close([[p.detach() for p in ps]], [ref[-1]])


@pytest.mark.parametrize("case", SGD_CASES)
def test_fused_sgd_equals_apex_kernel(case):
    kw = SGD_CASES[case]
    params, grads = _problem(4)
    ref, buf = ref_sgd(params, grads, **kw)
    ours, _ = run_functional(fo.apex.fused_sgd(**kw), params, grads)
    assert_close(ours, ref)
    cls, opt, _ = run_class(lambda ps: FusedSGD(ps, **kw), params, grads)
    assert_close(cls, ref)
    state = opt.state_dict()["state"]
    if kw["momentum"]:
        assert_close([[state[i]["momentum_buffer"] for i in range(3)]], [buf])
    else:
        assert state == {}


@pytest.mark.parametrize("case", NOVOGRAD_CASES)
def test_fused_novograd_equals_apex_kernel(case):
    kw = NOVOGRAD_CASES[case]
    params, grads = _problem(5)
    ref, m, norms = ref_novograd(params, grads, **kw)
    ours, _ = run_functional(fo.apex.fused_novograd(**kw), params, grads)
    assert_close(ours, ref)
    cls, opt, _ = run_class(lambda ps: FusedNovoGrad(ps, **kw), params, grads)
    assert_close(cls, ref)
    group = opt.state_dict()["param_groups"][0]
    assert group["step"] == STEPS
    assert group["exp_avg_sq"][0].numel() == 0
    assert_close([[group["exp_avg_sq"][1]]], [[torch.tensor(norms, dtype=torch.float64)]])


def test_fused_novograd_is_not_nvnovograd():
    # the same betas, different algorithms: apex averages the norm with bias correction
    params, grads = _problem(6)
    apex, _ = run_functional(fo.apex.fused_novograd(1e-2, betas=(0.95, 0.98)), params, grads[:2])
    timm, _ = run_functional(fo.timm.nvnovograd(1e-2, betas=(0.95, 0.98)), params, grads[:2])
    assert float((apex[-1][0] - timm[-1][0]).abs().max()) > 1e-4


@pytest.mark.parametrize("name,make", [
    ("adam", lambda ps: FusedAdam(ps, lr=1e-2, weight_decay=0.1)),
    ("lamb", lambda ps: FusedLAMB(ps, lr=1e-2)),
    ("sgd", lambda ps: FusedSGD(ps, lr=0.1, momentum=0.9, nesterov=True)),
    ("novograd", lambda ps: FusedNovoGrad(ps, lr=1e-2, weight_decay=0.01)),
])
def test_state_dict_round_trip_continues_the_trajectory(name, make):
    params, grads = _problem(7)
    full, _, _ = run_class(make, params, grads)
    _, opt, ps = run_class(make, params, grads[:3])
    saved = opt.state_dict()
    ps2 = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt2 = make(ps2)
    opt2.load_state_dict(saved)
    for gs in grads[3:]:
        for p, g in zip(ps2, gs):
            p.grad = None if g is None else g.clone()
        opt2.step()
    assert_close([[p.detach() for p in ps2]], [full[-1]], tol=0.0)


def test_an_apex_layout_state_dict_loads():
    # apex's groups hold no adam_w_mode/use_nvlamb/reg_inside_moment: ours fill them in
    params, grads = _problem(8)
    full, _, _ = run_class(lambda ps: FusedNovoGrad(ps, lr=1e-2, reg_inside_moment=True), params, grads)
    _, opt, ps = run_class(lambda ps: FusedNovoGrad(ps, lr=1e-2, reg_inside_moment=True), params, grads[:2])
    saved = opt.state_dict()
    apex_like = {"state": saved["state"],
                 "param_groups": [{k: v for k, v in g.items() if k != "reg_inside_moment"}
                                  for g in saved["param_groups"]]}
    ps2 = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt2 = FusedNovoGrad(ps2, lr=1e-2, reg_inside_moment=True)
    opt2.load_state_dict(apex_like)
    assert opt2.param_groups[0]["reg_inside_moment"] is True
    for gs in grads[2:]:
        for p, g in zip(ps2, gs):
            p.grad = None if g is None else g.clone()
        opt2.step()
    assert_close([[p.detach() for p in ps2]], [full[-1]], tol=0.0)


def test_a_group_without_grads_still_counts_its_step():
    w = torch.nn.Parameter(torch.ones(2))
    v = torch.nn.Parameter(torch.ones(2))
    opt = FusedAdam([{"params": [w]}, {"params": [v]}], lr=0.1)
    for _ in range(3):
        w.grad, v.grad = torch.ones(2), None
        opt.step()
    v.grad = torch.ones(2)
    opt.step()
    groups = opt.state_dict()["param_groups"]
    assert groups[0]["step"] == 4 and groups[1]["step"] == 4
    # v's first update is bias-corrected with step 4, as apex's group step
    b1, b2 = 0.9, 0.999
    m, s = (1 - b1), (1 - b2)
    expected = 1 - 0.1 * (m / (1 - b1 ** 4)) / (math.sqrt(s / (1 - b2 ** 4)) + 1e-8)
    assert torch.allclose(v.detach(), torch.full((2,), expected), rtol=1e-6, atol=0)


@pytest.mark.parametrize("make,match", [
    (lambda: fo.apex.fused_adam(lr=-1.0), "lr must be >= 0"),
    (lambda: fo.apex.fused_adam(betas=(1.0, 0.9)), r"betas\[0\]"),
    (lambda: fo.apex.fused_adam(amsgrad=True), "amsgrad"),
    (lambda: fo.apex.fused_lamb(max_grad_norm=0.0), "max_grad_norm must be > 0"),
    (lambda: fo.apex.fused_sgd(0.1, nesterov=True), "Nesterov"),
    (lambda: fo.apex.fused_sgd(0.1, momentum=-1.0), "momentum must be >= 0"),
    (lambda: fo.apex.fused_novograd(norm_type=1), "norm_type"),
    (lambda: FusedSGD([torch.nn.Parameter(torch.ones(1))]), "lr is required"),
    (lambda: FusedAdam([torch.nn.Parameter(torch.ones(1))], use_master=True), "use_master"),
])
def test_bad_arguments_name_the_argument(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


@pytest.mark.parametrize("name", ["fusedadam", "fusedadamw", "fusedlamb", "fusedsgd", "fusednovograd"])
def test_registry_names_build_and_step(name):
    from adapters.timm import create_optimizer_v2, get_optimizer_info
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    opt = create_optimizer_v2(model, name, lr=1e-2, weight_decay=0.01)
    expected = {"fusedadam": FusedAdam, "fusedadamw": FusedAdam, "fusedlamb": FusedLAMB,
                "fusedsgd": FusedSGD, "fusednovograd": FusedNovoGrad}[name]
    assert type(opt) is expected
    defaults = get_optimizer_info(name).defaults or {}
    for key, value in defaults.items():
        assert opt.param_groups[0][key] == value
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(4, 3)).square().sum().backward()
    opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


# apex's constructors (the __init__ of FusedAdam, FusedLAMB, FusedSGD and FusedNovoGrad in
# apex/optimizers/fused_*.py at the commits cited above)
APEX_SIGNATURES = {
    FusedAdam: "(params, lr=0.001, bias_correction=True, betas=(0.9, 0.999), eps=1e-08, adam_w_mode=True, "
               "weight_decay=0.0, amsgrad=False, set_grad_none=True, capturable=False, use_master=False)",
    FusedLAMB: "(params, lr=0.001, bias_correction=True, betas=(0.9, 0.999), eps=1e-06, weight_decay=0.01, "
               "amsgrad=False, adam_w_mode=True, grad_averaging=True, set_grad_none=True, max_grad_norm=1.0, "
               "use_nvlamb=False)",
    FusedSGD: "(params, lr=<required parameter>, momentum=0, dampening=0, weight_decay=0, nesterov=False, "
              "wd_after_momentum=False)",
    FusedNovoGrad: "(params, lr=0.001, bias_correction=True, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0, "
                   "amsgrad=False, reg_inside_moment=False, grad_averaging=True, norm_type=2, init_zero=False, "
                   "set_grad_none=True)",
}


@pytest.mark.parametrize("cls", list(APEX_SIGNATURES), ids=lambda c: c.__name__)
def test_signatures_equal_apex(cls):
    import inspect
    assert str(inspect.signature(cls)) == APEX_SIGNATURES[cls]
    assert cls.__module__ == "adapters.apex"
