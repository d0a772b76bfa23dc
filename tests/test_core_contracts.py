"""Purity, re-initialisation and bad input for the core transforms."""

from __future__ import annotations

import optree
import pytest
import torch

import functional_optim as fo

DT = torch.float64


def _params():
    gen = torch.Generator().manual_seed(0)
    return {"a": torch.randn(3, 2, generator=gen, dtype=DT), "b": torch.randn((), generator=gen, dtype=DT)}


def _grads(seed):
    gen = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(3, 2, generator=gen, dtype=DT), "b": torch.randn((), generator=gen, dtype=DT)}


TRANSFORMS = {
    "sgd_momentum_dampening": lambda: fo.sgd(lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.1),
    "adam_amsgrad": lambda: fo.adam(lr=0.1, amsgrad=True),
    "adamw": lambda: fo.adamw(lr=0.1),
    "chain": lambda: fo.chain(fo.clip_by_global_norm(1.0), fo.scale_by_adam(), fo.add_decayed_weights(1e-2),
                              fo.scale_by_learning_rate(lambda c: 0.1 * 0.9 ** c)),
    "trace": lambda: fo.trace(0.9, nesterov=True),
    "ema": lambda: fo.ema(0.9),
    "scale_by_rms": lambda: fo.scale_by_rms(),
    "clip": lambda: fo.clip(0.5),
    "scale_by_sign": lambda: fo.scale_by_sign(),
}


def _clone(tree):
    return optree.tree_map(lambda x: x.clone(), tree)


def _equal(a, b):
    la, sa = optree.tree_flatten(a, none_is_leaf=True)
    lb, sb = optree.tree_flatten(b, none_is_leaf=True)
    return sa == sb and all((x is None and y is None) or torch.equal(x, y) for x, y in zip(la, lb))


def _advance(tx, state, params, steps=3):
    for i in range(steps):
        updates, state = tx.update(_grads(10 + i), state, params)
        params = fo.apply_updates(params, updates)
    return state, params


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_update_is_pure_and_deterministic(name):
    tx = TRANSFORMS[name]()
    params = _params()
    state, params = _advance(tx, tx.init(params), params)
    grads = _grads(99)
    snapshot = (_clone(grads), _clone(state), _clone(params))
    first = tx.update(grads, state, params)
    assert _equal(grads, snapshot[0]) and _equal(state, snapshot[1]) and _equal(params, snapshot[2])
    second = tx.update(grads, state, params)
    assert _equal(first, second)


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_donation_touches_only_updates_and_state(name):
    tx = TRANSFORMS[name]()
    params = _params()
    state, params = _advance(tx, tx.init(params), params)
    grads = _grads(7)
    expected = tx.update(_clone(grads), _clone(state), params)
    params_before = _clone(params)
    donated = tx.update(_clone(grads), _clone(state), params, donate=True)
    assert _equal(params, params_before)
    for x, y in zip(optree.tree_leaves(donated), optree.tree_leaves(expected)):
        torch.testing.assert_close(x, y, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_init_twice_equal_and_reinit_restarts_exactly(name):
    tx = TRANSFORMS[name]()
    params = _params()
    assert _equal(tx.init(params), tx.init(params))
    run1 = _advance(tx, tx.init(params), params, 5)
    run2 = _advance(tx, tx.init(params), params, 5)  # no hidden state survives in the closure
    assert _equal(run1, run2)


# -- bad input -------------------------------------------------------------------


@pytest.mark.parametrize("make,error,match", [
    (lambda: fo.sgd(lr=-0.1), ValueError, "lr"),
    (lambda: fo.adam(lr=-1e-3), ValueError, "lr"),
    (lambda: fo.adam(eps=-1e-8), ValueError, "eps"),
    (lambda: fo.adam(betas=(1.0, 0.999)), ValueError, "index 0"),
    (lambda: fo.adam(betas=(0.9, -0.1)), ValueError, "index 1"),
    (lambda: fo.adamw(betas=(0.9, 1.5)), ValueError, "index 1"),
    (lambda: fo.sgd(lr=0.1, nesterov=True), ValueError, "Nesterov"),
    (lambda: fo.sgd(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), ValueError, "Nesterov"),
    (lambda: fo.sgd(lr=0.1, momentum=-0.5), ValueError, "momentum"),
    (lambda: fo.sgd(lr=0.1, weight_decay=-1), ValueError, "weight_decay"),
    (lambda: fo.scale_by_adam(b1=1.2), ValueError, "b1"),
    (lambda: fo.clip_by_global_norm(0.0), ValueError, "max_norm"),
    (lambda: fo.scale(torch.ones(2)), ValueError, "one element"),
    (lambda: fo.sgd(lr="fast"), TypeError, "lr"),
    (lambda: fo.chain(fo.scale(1.0), "adam"), TypeError, r"transforms\[1\]"),
    (lambda: fo.named_chain(("a", fo.scale(1.0)), ("a", fo.scale(2.0))), ValueError, "unique"),
])
def test_bad_hyperparameters_name_the_argument(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_torch_raises_the_same_error_classes():
    w = [torch.nn.Parameter(torch.ones(1))]
    for make_torch, make_ours in [(lambda: torch.optim.SGD(w, lr=-1), lambda: fo.sgd(lr=-1)),
                                  (lambda: torch.optim.Adam(w, eps=-1), lambda: fo.adam(eps=-1)),
                                  (lambda: torch.optim.Adam(w, betas=(1.0, 0.9)), lambda: fo.adam(betas=(1.0, 0.9))),
                                  (lambda: torch.optim.SGD(w, nesterov=True), lambda: fo.sgd(nesterov=True))]:
        with pytest.raises(Exception) as theirs:
            make_torch()
        with pytest.raises(Exception) as ours:
            make_ours()
        assert type(ours.value) is type(theirs.value)


def test_state_that_does_not_match_the_params_tree():
    tx = fo.adam(lr=0.1)
    params = _params()
    other = tx.init({"a": torch.zeros(3, 2, dtype=DT)})  # a missing key
    with pytest.raises(ValueError, match="state"):
        tx.update(_grads(0), other, params)
    extra = tx.init({**params, "c": torch.zeros(2, dtype=DT)})  # an extra leaf
    with pytest.raises(ValueError, match="state"):
        tx.update(_grads(0), extra, params)
    with pytest.raises(ValueError, match="state must be a tuple of"):
        tx.update(_grads(0), tx.init(params)[:1], params)


def test_missing_params_and_extra_arguments():
    tx = fo.add_decayed_weights(0.1)
    with pytest.raises(ValueError, match="needs params"):
        tx.update(_grads(0), tx.init(_params()))
    # unknown extra keyword arguments are ignored
    sgd = fo.sgd(lr=0.1)
    u, _ = sgd.update(_grads(0), sgd.init(_params()), _params(), value=torch.tensor(1.0), whatever=3)
    torch.testing.assert_close(u["a"], -0.1 * _grads(0)["a"])


def test_none_gradients_pass_through_and_keep_their_state():
    tx = fo.adam(lr=0.1)
    params = _params()
    state = tx.init(params)
    updates, new_state = tx.update({"a": _grads(0)["a"], "b": None}, state, params)
    assert updates["b"] is None
    count = fo.tree.get(new_state, "count")
    assert int(count["a"]) == 1 and int(count["b"]) == 0
    assert torch.equal(fo.tree.get(new_state, "mu")["b"], fo.tree.get(state, "mu")["b"])


def test_transforms_declare_what_they_need():
    N = fo.Needs
    assert fo.needs(fo.adam()) == N.ELEMENTWISE and fo.is_elementwise(fo.sgd(momentum=0.9))
    assert fo.needs(fo.clip_by_global_norm(1.0)) == N.GLOBAL
    assert fo.needs(fo.chain(fo.clip_by_global_norm(1.0), fo.adam())) == N.GLOBAL  # the most of its parts
    assert fo.needs(fo.named_chain(("a", fo.adam()), ("t", fo.scale_by_trust_ratio()))) == N.PER_PARAM
    assert fo.needs(fo.apply_if_finite(fo.adam(), 3)) == N.GLOBAL
    assert fo.needs(fo.masked(fo.adam(), lambda p: [True] * len(p))) == N.LEAVES  # by leaf label
    assert fo.needs(fo.add_noise(0.1, 0.5)) == N.LEAVES  # noise keyed by leaf position
    assert fo.needs(fo.optax.lamb()) == fo.needs(fo.optax.lars()) == fo.needs(fo.clip_by_block_rms(1.0)) == N.PER_PARAM
    assert fo.needs(fo.lookahead(fo.chain(fo.clip_by_global_norm(1.0), fo.sgd()), 5, 0.5)) == N.GLOBAL
    assert fo.needs(fo.adaptive_grad_clip(0.1)) == N.MATRIX
    assert fo.needs(fo.MultiSteps(fo.adam(), 2).gradient_transformation()) == N.ELEMENTWISE
    assert fo.needs(fo.MultiSteps(fo.adam(), 2, should_skip_update_fn=fo.skip_not_finite)
                    .gradient_transformation()) == N.GLOBAL
    undeclared = fo.GradientTransformation(lambda p: fo.EmptyState(), lambda u, s, p=None, **kw: (u, s))
    assert fo.needs(undeclared) == N.MATRIX  # the safe default
    assert fo.needs(fo.inject_hyperparams(fo.adam)(lr=0.1)) == N.ELEMENTWISE
