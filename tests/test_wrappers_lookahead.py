"""lookahead: timm's and optax's rules re-implemented here, purity, None grads, compile, errors."""

from __future__ import annotations

import pytest
import torch

import functional_optim as fo
from functional_optim.wrappers.lookahead import LookaheadState, lookahead, lookahead_slow_params
from parity import SOMETIMES, make_grads, make_params, max_rel_diff, run_functional
from compile_counting import CountingBackend

STEPS = 40
TOL = 1e-10  # float64, relative

INNER = {
    "sgd": (torch.optim.SGD, dict(lr=0.05, momentum=0.9), lambda: fo.sgd(lr=0.05, momentum=0.9)),
    "adam": (torch.optim.Adam, dict(lr=0.02), lambda: fo.adam(lr=0.02)),
}


def run_timm_rule(cls, kwargs, params, grads, k, alpha):
    """timm's Lookahead as written in optimizer-semantics.md: a group counter; at every
    k-th step, for each param with a grad, create the slow buffer as a copy of the fast
    weights if missing, then ``slow += alpha * (fast - slow)`` and ``fast = slow``."""
    leaves = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    opt = cls(list(leaves.values()), **kwargs)
    slow, lookahead_step, trajectory, slows = {}, 0, [], []
    for g in grads:
        for n, leaf in leaves.items():
            leaf.grad = None if g[n] is None else g[n].clone()
        opt.step()
        lookahead_step += 1
        if lookahead_step % k == 0:
            with torch.no_grad():
                for n, fast in leaves.items():
                    if fast.grad is None:
                        continue
                    if n not in slow:
                        slow[n] = fast.detach().clone()
                    slow[n].add_(fast - slow[n], alpha=alpha)
                    fast.copy_(slow[n])
        trajectory.append({n: leaf.detach().clone() for n, leaf in leaves.items()})
        slows.append({n: s.clone() for n, s in slow.items()})
    return trajectory, slows


def run_optax_rule(cls, kwargs, params, grads, k, alpha, reset_state):
    """optax's lookahead as in the inventory / optax source, on LookaheadParams(fast, slow)
    with slow = the initial params; the fast update u is torch's step (after - before)."""
    fast = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    slow = {n: p.clone() for n, p in params.items()}
    opt = cls(list(fast.values()), **kwargs)
    steps_since_sync, trajectory, slows = 0, [], []
    for g in grads:
        before = {n: p.detach().clone() for n, p in fast.items()}
        for n, leaf in fast.items():
            leaf.grad = g[n].clone()
        opt.step()
        sync_next = float(steps_since_sync == k - 1)
        with torch.no_grad():
            for n, leaf in fast.items():
                u = leaf - before[n]
                last_difference = before[n] + u - slow[n]
                slow_update = alpha * sync_next * last_difference
                fast_update = u - sync_next * (1 - alpha) * last_difference
                leaf.copy_(before[n] + fast_update)
                slow[n] = slow[n] + slow_update
        if reset_state and sync_next:
            opt.state.clear()  # torch re-creates the state lazily, as init would
        steps_since_sync = (steps_since_sync + 1) % k
        trajectory.append({n: leaf.detach().clone() for n, leaf in fast.items()})
        slows.append({n: s.clone() for n, s in slow.items()})
    return trajectory, slows


def run_ours(tx, params, grads, donate=False):
    state = tx.init(params)
    trajectory, slows = [], []
    for g in grads:
        g = {n: None if v is None else v.clone() for n, v in g.items()}
        updates, state = tx.update(g, state, params, donate=donate)
        params = fo.apply_updates(params, updates)
        trajectory.append(params)
        slows.append(lookahead_slow_params(state))
    return trajectory, slows, state


@pytest.mark.parametrize("inner", list(INNER))
@pytest.mark.parametrize("k,alpha", [(4, 0.5), (3, 0.8)])
def test_first_sync_matches_timm_rule(inner, k, alpha):
    cls, kwargs, make = INNER[inner]
    params = make_params()
    grads = make_grads(params, STEPS)  # the SOMETIMES leaf has no gradient every 3rd step
    ref, ref_slow = run_timm_rule(cls, kwargs, params, grads, k, alpha)
    ours, our_slow, _ = run_ours(lookahead(make(), k, alpha, slow_init="first_sync"), params, grads)
    assert max_rel_diff(ours, ref) < TOL
    # slow weights, for every leaf that has a slow buffer in timm
    for mine, theirs in zip(our_slow, ref_slow):
        assert max_rel_diff([{n: mine[n] for n in theirs}], [theirs]) < TOL
    # with k=4 the SOMETIMES leaf has no gradient at the first sync: timm creates no buffer
    # for it then, and neither do we
    first = set(params) - ({SOMETIMES} if (k - 1) % 3 == 0 else set())
    assert set(ref_slow[k - 1]) == first


@pytest.mark.parametrize("inner", list(INNER))
@pytest.mark.parametrize("reset_state", [False, True])
def test_params_init_matches_optax_rule(inner, reset_state):
    cls, kwargs, make = INNER[inner]
    params = make_params()
    grads = make_grads(params, STEPS, none_every=10 ** 6)  # optax has no None gradients
    grads = [{n: torch.randn_like(p) if v is None else v for (n, v), p in zip(g.items(), params.values())}
             for g in grads]
    k, alpha = 4, 0.6
    ref, ref_slow = run_optax_rule(cls, kwargs, params, grads, k, alpha, reset_state)
    ours, our_slow, _ = run_ours(lookahead(make(), k, alpha, reset_state=reset_state), params, grads)
    assert max_rel_diff(ours, ref) < TOL
    assert max_rel_diff(our_slow, ref_slow) < TOL
    # before the first sync the params follow the inner optimizer exactly
    plain = run_functional(make(), params, grads)
    assert max_rel_diff(ours[:k - 1], plain[:k - 1]) == 0.0
    assert max_rel_diff(ours[k - 1:k], plain[k - 1:k]) > 1e-3  # and the sync moved them


def test_sync_step_update_and_state_fields():
    params = {"w": torch.tensor([1.0, -2.0], dtype=torch.float64)}
    tx = lookahead(fo.sgd(lr=0.5), sync_period=2, slow_step_size=0.25)
    state = tx.init(params)
    g = {"w": torch.tensor([2.0, 2.0], dtype=torch.float64)}
    u, state = tx.update(g, state, params)  # step 1: plain fast step
    assert torch.equal(u["w"], torch.tensor([-1.0, -1.0], dtype=torch.float64))
    assert state.steps_since_sync.item() == 1 and state.steps_since_sync.dtype == torch.int32
    p1 = fo.apply_updates(params, u)
    u, state = tx.update(g, state, p1)  # step 2: fast = p0 - 2, new = p0 + 0.25 * (-2) = p0 - 0.5
    p2 = fo.apply_updates(p1, u)
    torch.testing.assert_close(p2["w"], params["w"] - 0.5, rtol=0, atol=1e-15)
    torch.testing.assert_close(lookahead_slow_params(state)["w"], params["w"] - 0.5, rtol=0, atol=1e-15)
    assert state.steps_since_sync.item() == 0


def test_none_leaf_at_sync_is_not_synced():
    params = {"a": torch.ones(3, dtype=torch.float64), "b": torch.ones(2, dtype=torch.float64)}
    tx = lookahead(fo.sgd(lr=0.1), sync_period=2, slow_step_size=0.5, slow_init="first_sync")
    state = tx.init(params)
    g = {"a": torch.ones(3, dtype=torch.float64), "b": torch.ones(2, dtype=torch.float64)}
    u, state = tx.update(g, state, params)
    params = fo.apply_updates(params, u)
    u, state = tx.update({"a": g["a"], "b": None}, state, params)  # sync step; b has no gradient
    assert u["b"] is None
    assert bool(state.slow_set["a"]) and not bool(state.slow_set["b"])
    assert torch.equal(state.slow["b"], torch.zeros(2, dtype=torch.float64))
    # the first sync of timm's rule is a no-op: a moved by its plain fast step
    torch.testing.assert_close(fo.apply_updates(params, u)["a"], params["a"] - 0.1, rtol=0, atol=1e-15)
    # helper with params: unset leaves come from params
    assert torch.equal(lookahead_slow_params(state, params)["b"], params["b"])


def _clone_tree(tree):
    return fo.tree.map(torch.clone, tree)


def _assert_trees_equal(a, b):
    import optree
    la, sa = optree.tree_flatten(a, none_is_leaf=True)
    lb, sb = optree.tree_flatten(b, none_is_leaf=True)
    assert sa == sb
    for x, y in zip(la, lb):
        assert (x is None and y is None) or torch.equal(x, y)


@pytest.mark.parametrize("reset_state", [False, True])
def test_pure_without_donate_and_donate_gives_same_numbers(reset_state):
    params = make_params()
    grads = make_grads(params, 8)
    tx = lookahead(fo.adam(lr=0.1), sync_period=3, reset_state=reset_state)
    state = tx.init(params)
    for g in grads:
        g_in, s_in, p_in = _clone_tree(g), _clone_tree(state), _clone_tree(params)
        u1, s1 = tx.update(g_in, s_in, p_in)
        _assert_trees_equal(g_in, g)
        _assert_trees_equal(s_in, state)
        _assert_trees_equal(p_in, params)
        u2, s2 = tx.update(_clone_tree(g), _clone_tree(state), params, donate=True)
        _assert_trees_equal(u1, u2)
        _assert_trees_equal(s1, s2)
        u3, _ = tx.update(g, state, params)  # re-running gives the same outputs
        _assert_trees_equal(u1, u3)
        state, params = s1, fo.apply_updates(params, u1)


def test_compiled_one_graph_across_syncs():
    torch._dynamo.reset()
    tx = lookahead(fo.adam(lr=1e-2), sync_period=6, slow_step_size=0.5)
    gen = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(4, 3, generator=gen), "b": torch.randn(3, generator=gen)}
    counter = CountingBackend()
    compiled = torch.compile(tx.update, fullgraph=True, backend=counter)
    state_c = state_e = tx.init(params)
    params_c = params_e = params
    for _ in range(20):  # syncs after steps 6, 12 and 18
        grads = {"w": torch.randn(4, 3, generator=gen), "b": torch.randn(3, generator=gen)}
        u_c, state_c = compiled(grads, state_c, params_c)
        u_e, state_e = tx.update(grads, state_e, params_e)
        params_c, params_e = fo.apply_updates(params_c, u_c), fo.apply_updates(params_e, u_e)
    assert counter.graphs == 1
    for key in params:
        torch.testing.assert_close(params_c[key], params_e[key], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(state_c.slow[key], state_e.slow[key], rtol=1e-6, atol=1e-7)
    assert state_c.steps_since_sync.item() == 20 % 6


def test_state_type_and_elementwise():
    tx = lookahead(fo.adam())
    state = tx.init({"w": torch.zeros(2)})
    assert isinstance(state, LookaheadState)
    assert fo.is_elementwise(tx)


def test_bad_input_errors():
    with pytest.raises(TypeError, match="fast_optimizer"):
        lookahead(lambda: None)
    with pytest.raises(ValueError, match="sync_period"):
        lookahead(fo.sgd(0.1), sync_period=0)
    with pytest.raises(TypeError, match="sync_period"):
        lookahead(fo.sgd(0.1), sync_period=2.0)
    with pytest.raises(ValueError, match="slow_step_size"):
        lookahead(fo.sgd(0.1), slow_step_size=1.5)
    with pytest.raises(ValueError, match="slow_init"):
        lookahead(fo.sgd(0.1), slow_init="lazy")
    with pytest.raises(TypeError, match="reset_state"):
        lookahead(fo.sgd(0.1), reset_state=1)
    tx = lookahead(fo.sgd(0.1))
    params = {"w": torch.zeros(2)}
    with pytest.raises(ValueError, match="params"):
        tx.update({"w": torch.ones(2)}, tx.init(params))
    with pytest.raises(ValueError, match="lookahead"):
        lookahead_slow_params((fo.EmptyState(),))


def test_differentiable_with_torch_func():
    """Meta-gradient through 7 lookahead(adam) steps (two syncs) w.r.t. the initial params
    equals central finite differences (float64): the slow weights are taken from the params
    inside update, so they carry the dependence on the initial params."""
    tx = lookahead(fo.adam(lr=0.1), sync_period=3, slow_step_size=0.5)

    def loss_after_steps(p0):
        state, p = tx.init(p0), p0
        for _ in range(7):
            u, state = tx.update(2 * p, state, p)  # the gradient of sum(p**2)
            p = fo.apply_updates(p, u)
        return (p ** 2).sum() + lookahead_slow_params(state).sum()

    p0 = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    grad = torch.func.grad(loss_after_steps)(p0)
    eps = 1e-6
    fd = torch.stack([(loss_after_steps(p0 + eps * e) - loss_after_steps(p0 - eps * e)) / (2 * eps)
                      for e in torch.eye(3, dtype=torch.float64)])
    torch.testing.assert_close(grad, fd, rtol=1e-7, atol=1e-8)
    assert grad.abs().min() > 1e-3
