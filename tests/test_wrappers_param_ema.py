"""param_ema: torch.optim.swa_utils.AveragedModel, timm's ModelEmaV3 rule and optax-style
debiasing (written out here), None grads, purity, errors."""

from __future__ import annotations

import math

import optree
import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import functional_optim as fo
from functional_optim.wrappers.param_ema import ParamEmaState, ema_params, param_ema
from parity import SHAPES, SOMETIMES, make_grads, make_params, max_rel_diff

STEPS = 40
TOL = 1e-10  # float64, relative

SHAPES_NO_NONE = {n: s for n, s in SHAPES.items() if n != SOMETIMES}


class Holder(torch.nn.Module):
    def __init__(self, params):
        super().__init__()
        self.p = torch.nn.ParameterDict({n: torch.nn.Parameter(v.clone()) for n, v in params.items()})


def param_trajectory(params, grads, lr=0.05):
    model = Holder(params)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    out = []
    for g in grads:
        for n, p in model.p.items():
            p.grad = g[n].clone()
        opt.step()
        out.append({n: p.detach().clone() for n, p in model.p.items()})
    return out


def run_ema_on_trajectory(tx, params, trajectory, donate=False):
    """Feed ``u = p_next - p`` of a given trajectory (params p) to ``tx``; EMA after each step."""
    state, out = tx.init(params), []
    for nxt in trajectory:
        u = {n: nxt[n] - params[n] for n in params}
        u_out, state = tx.update(u, state, params, donate=donate)
        params = fo.apply_updates(params, u_out)
        out.append(ema_params(state))
    return out


@pytest.mark.parametrize("decay", [0.9, 0.999])
def test_matches_averaged_model_on_torch_trajectory(decay):
    params = make_params(shapes=SHAPES_NO_NONE)
    grads = make_grads(params, STEPS)
    model = Holder(params)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
    trajectory, ref = [], []
    for g in grads:
        for n, p in model.p.items():
            p.grad = g[n].clone()
        opt.step()
        averaged.update_parameters(model)
        trajectory.append({n: p.detach().clone() for n, p in model.p.items()})
        ref.append({n: p.detach().clone() for n, p in averaged.module.p.items()})
    ours = run_ema_on_trajectory(param_ema(decay), params, trajectory)
    assert max_rel_diff(ours, ref) < TOL
    # the same through a chain whose first part is the optimizer itself
    tx = fo.chain(fo.adam(lr=0.05), param_ema(decay))
    state, chained = tx.init(params), []
    p = params
    for g in grads:
        u, state = tx.update(g, state, p)
        p = fo.apply_updates(p, u)
        chained.append(fo.tree.get(state, "ema"))
    assert max_rel_diff(chained, ref) < TOL
    assert max_rel_diff([p], [trajectory[-1]]) < TOL


def timm_v3_rule(params, trajectory, decay, min_decay=0.0, update_after_step=0, use_warmup=False,
                 warmup_gamma=1.0, warmup_power=2 / 3, pass_step=True):
    """timm's ModelEmaV3: ema starts as a copy of the model; after every optimizer step
    ``update(model, step=num_updates)`` with ``get_decay`` as in timm (Python floats)."""

    def get_decay(step):
        if step is None:
            return decay
        step = max(0, step - update_after_step - 1)
        if step <= 0:
            return 0.0
        if use_warmup:
            d = 1 - (1 + step / warmup_gamma) ** -warmup_power
            return max(min(d, decay), min_decay)
        return decay

    ema = {n: p.clone() for n, p in params.items()}
    out = []
    for num_updates, p in enumerate(trajectory, start=1):
        d = get_decay(num_updates if pass_step else None)
        ema = {n: torch.lerp(ema[n], p[n], 1.0 - d) for n in ema}
        out.append(ema)
    return out


@pytest.mark.parametrize("case", [
    dict(decay=0.9999, use_warmup=True),  # timm's defaults with warmup
    dict(decay=0.95, use_warmup=True, warmup_gamma=3.0, warmup_power=0.75, min_decay=0.2, update_after_step=4),
    dict(decay=0.9, update_after_step=5),
], ids=["warmup-defaults", "warmup-custom", "no-warmup-delayed"])
def test_matches_timm_model_ema_v3_rule(case):
    params = make_params(shapes=SHAPES_NO_NONE)
    trajectory = param_trajectory(params, make_grads(params, STEPS))
    ref = timm_v3_rule(params, trajectory, **case)
    ours = run_ema_on_trajectory(param_ema(**case), params, trajectory)
    assert max_rel_diff(ours, ref) < TOL
    # with warmup the decay really varies: the last EMA differs from a constant-decay one
    if case.get("use_warmup"):
        const = run_ema_on_trajectory(param_ema(case["decay"]), params, trajectory)
        assert max_rel_diff(const[-1:], ours[-1:]) > 1e-3


def test_update_after_step_minus_one_is_model_ema_v2():
    params = make_params(shapes=SHAPES_NO_NONE)
    trajectory = param_trajectory(params, make_grads(params, STEPS))
    ref = timm_v3_rule(params, trajectory, 0.8, pass_step=False)  # constant decay from the init copy
    tx = param_ema(0.8, update_after_step=-1)
    assert max_rel_diff([ema_params(tx.init(params))], [params]) == 0.0
    assert max_rel_diff(run_ema_on_trajectory(tx, params, trajectory), ref) < TOL


@pytest.mark.parametrize("update_after_step", [0, 3])
def test_debias_matches_optax_style_rule(update_after_step):
    params = make_params(shapes=SHAPES_NO_NONE)
    trajectory = param_trajectory(params, make_grads(params, STEPS))
    decay = 0.9
    # optax-style: mu starts at zero, mu = decay * mu + (1 - decay) * x, read mu / (1 - decay**n);
    # averaging starts at the (update_after_step + 1)-th step, before which the EMA is a copy
    ref, mu, n = [], None, 0
    for t, p in enumerate(trajectory, start=1):
        if t < update_after_step + 1:
            ref.append(dict(p))
            continue
        n += 1
        mu = {k: decay * (mu[k] if mu else 0.0) + (1 - decay) * p[k] for k in p}
        ref.append({k: mu[k] / (1 - decay ** n) for k in p})
    ours = run_ema_on_trajectory(param_ema(decay, debias=True, update_after_step=update_after_step),
                                 params, trajectory)
    assert max_rel_diff(ours, ref) < TOL


def test_none_update_keeps_leaf_average_and_count():
    params = make_params()
    grads = make_grads(params, 12)  # SOMETIMES: None at steps 0, 3, 6, 9
    decay = 0.7
    tx = fo.chain(fo.sgd(lr=0.1), param_ema(decay))
    state, p = tx.init(params), params
    ref = {n: None for n in params}
    for g in grads:
        u, state = tx.update(g, state, p)
        assert (u[SOMETIMES] is None) == (g[SOMETIMES] is None)
        p = fo.apply_updates(p, u)
        for n in params:
            if g[n] is None:
                continue
            ref[n] = p[n].clone() if ref[n] is None else decay * ref[n] + (1 - decay) * p[n]
        # ... written out: no update, no averaging for that leaf (its params did not move)
    ours = ema_params(state)
    assert max_rel_diff([ours], [ref]) < TOL
    counts = fo.tree.get(state, "count")
    assert counts[SOMETIMES].item() == 8 and counts["matrix"].item() == 12


def test_pure_updates_passed_through_and_donate_same_numbers():
    params = make_params()
    grads = make_grads(params, 5)
    tx = param_ema(0.9, use_warmup=True)
    state = tx.init(params)
    for g in grads:
        g_in, s_in, p_in = (fo.tree.map(torch.clone, t) for t in (g, state, params))
        u, s1 = tx.update(g_in, s_in, p_in)
        assert all(a is b for a, b in zip(optree.tree_leaves(u), optree.tree_leaves(g_in)))
        for a, b in ((g_in, g), (s_in, state), (p_in, params)):
            assert all(torch.equal(x, y) for x, y in zip(optree.tree_leaves(a), optree.tree_leaves(b)))
        _, s2 = tx.update(fo.tree.map(torch.clone, g), fo.tree.map(torch.clone, state), params, donate=True)
        assert all(torch.equal(x, y) for x, y in zip(optree.tree_leaves(s1), optree.tree_leaves(s2)))
        state, params = s1, fo.apply_updates(params, u)


def test_ema_dtype_float32_for_bfloat16_params():
    params = {"w": torch.linspace(-1, 1, 7, dtype=torch.bfloat16)}
    tx = param_ema(0.5, ema_dtype=torch.float32)
    state = tx.init(params)
    assert state.ema["w"].dtype == torch.float32
    p, ref = params, None
    for i in range(6):
        u = {"w": torch.full((7,), 0.01 * (i + 1), dtype=torch.bfloat16)}
        _, state = tx.update(u, state, p)
        p = fo.apply_updates(p, u)
        x = p["w"].float()
        ref = x if ref is None else 0.5 * ref + 0.5 * x
    assert state.ema["w"].dtype == torch.float32
    torch.testing.assert_close(state.ema["w"], ref, rtol=1e-6, atol=1e-7)


def test_state_readable_and_elementwise():
    tx = fo.chain(fo.adam(lr=0.1), param_ema())
    state = tx.init({"w": torch.ones(2)})
    assert isinstance(state[1], ParamEmaState)
    assert ema_params(state) is fo.tree.get(state, "ema")
    assert fo.is_elementwise(param_ema())
    assert math.isclose(param_ema.__kwdefaults__["warmup_power"], 2 / 3)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="decay"):
        param_ema(1.5)
    with pytest.raises(ValueError, match="decay"):
        param_ema(1.0, debias=True)
    with pytest.raises(ValueError, match="debias"):
        param_ema(0.9, debias=True, use_warmup=True)
    with pytest.raises(ValueError, match="warmup_gamma"):
        param_ema(warmup_gamma=0.0)
    with pytest.raises(ValueError, match="min_decay"):
        param_ema(min_decay=-0.1)
    with pytest.raises(ValueError, match="update_after_step"):
        param_ema(update_after_step=-2)
    with pytest.raises(TypeError, match="update_after_step"):
        param_ema(update_after_step=1.5)
    with pytest.raises(TypeError, match="ema_dtype"):
        param_ema(ema_dtype="float32")
    tx = param_ema()
    with pytest.raises(ValueError, match="params"):
        tx.update({"w": torch.ones(2)}, tx.init({"w": torch.zeros(2)}))
    with pytest.raises(ValueError, match="param_ema"):
        ema_params((fo.EmptyState(),))
