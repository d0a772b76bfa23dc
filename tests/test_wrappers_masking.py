"""masked / freeze / partition and the mask and label resolution behind them."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import optree
import pytest
import torch

import functional_optim as fo
from functional_optim.wrappers.labels import label_by_name, leaf_names, mask_by_name, resolve_mask
from functional_optim.wrappers.masking import MaskedState, freeze, masked
from functional_optim.wrappers.partition import (MultiTransformState, PartitionState, multi_transform,
                                                 partition, selective_transform)

STEPS = 20
SHAPES = {
    "encoder": {"layer": {"weight": (3, 2), "bias": (3,)}, "norm": {"weight": (3,)}},
    "decoder": {"weight": (2, 3), "bias": (2,)},
}
NONE_LEAF = ("encoder", "layer", "bias")  # this leaf's gradient is None every third step


def _params(seed: int = 0, dtype: torch.dtype = torch.float64) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return optree.tree_map(lambda s: torch.randn(s, generator=gen, dtype=dtype), SHAPES,
                           is_leaf=lambda x: isinstance(x, tuple))


def _get(tree: Any, path: tuple) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _paths(tree: Any) -> list[tuple]:
    return optree.tree_paths(tree, none_is_leaf=True)


def _grads(params: dict, steps: int = STEPS, seed: int = 1) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for step in range(steps):
        g = optree.tree_map(lambda p: torch.randn(p.shape, generator=gen, dtype=p.dtype), params)
        if step % 3 == 0:
            g["encoder"]["layer"]["bias"] = None
        out.append(g)
    return out


def _clone(tree: Any) -> Any:
    return optree.tree_map(lambda x: None if x is None else x.clone(), tree, none_is_leaf=True)


def _n_tensors(tree: Any) -> int:
    return sum(isinstance(x, torch.Tensor) for x in optree.tree_leaves(tree))


def _sgd_momentum_reference(params: dict, grads: list[dict], paths: list[tuple], lr: float,
                            momentum: float) -> list[dict]:
    """torch.optim.SGD's rule per leaf, written out: buf = g on the first step, then
    momentum * buf + g; update -lr * buf; leaves outside ``paths`` get the raw gradient
    added (pass-through); None gradients skip the leaf."""
    bufs: dict = {}
    p = _clone(params)
    out = []
    for g in grads:
        new = _clone(p)
        for path in _paths(params):
            gi = _get(g, path)
            if gi is None:
                continue
            if path in paths:
                bufs[path] = gi.clone() if path not in bufs else momentum * bufs[path] + gi
                _get(new, path[:-1])[path[-1]] = _get(p, path) - lr * bufs[path]
            else:
                _get(new, path[:-1])[path[-1]] = _get(p, path) + gi
        p = new
        out.append(p)
    return out


def _run(tx: fo.GradientTransformation, params: Any, grads: list, donate: bool = False) -> tuple[list, Any]:
    state = tx.init(params)
    out = []
    for g in grads:
        updates, state = tx.update(_clone(g), state, params, donate=donate)
        params = fo.apply_updates(params, updates)
        out.append(params)
    return out, state


def _assert_trees_close(a: Any, b: Any, rel: float) -> None:
    la, sa = optree.tree_flatten(a, none_is_leaf=True)
    lb, sb = optree.tree_flatten(b, none_is_leaf=True)
    assert sa == sb
    for x, y in zip(la, lb):
        assert (x is None) == (y is None)
        if x is not None:
            x, y = x.double(), y.double()
            assert (x - y).abs().max().item() <= rel * y.abs().max().item()


DECODER = [("decoder", "weight"), ("decoder", "bias")]
MASK_FORMS = {
    "full_tree": {"encoder": {"layer": {"weight": False, "bias": False}, "norm": {"weight": False}},
                  "decoder": {"weight": True, "bias": True}},
    "prefix": {"encoder": False, "decoder": True},
    "callable": lambda p: {"encoder": False, "decoder": optree.tree_map(lambda x: x.ndim >= 1, p["decoder"])},
    "glob": "decoder.*",
    "glob_list": ["decoder.weight", "*der.bias"],
}


# ---------------------------------------------------------------------------------
# names and masks


class Pair(NamedTuple):
    first: Any
    second: Any


def test_leaf_names():
    t = torch.ones(1)
    assert leaf_names({"fc": {"bias": t, "weight": t}}) == ["fc.bias", "fc.weight"]
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
    named = dict(model.named_parameters())
    assert sorted(leaf_names(named)) == sorted(named)
    assert leaf_names([t, None, t]) == ["0", "1", "2"]
    assert leaf_names({"opt": Pair(first=t, second=[t])}) == ["opt.first", "opt.second.0"]
    assert leaf_names(t) == [""]


@pytest.mark.parametrize("form", list(MASK_FORMS))
def test_mask_forms_route_and_allocate(form):
    params = _params()
    grads = _grads(params)
    tx = masked(fo.sgd(0.1, momentum=0.9), MASK_FORMS[form])
    state = tx.init(params)
    assert isinstance(state, MaskedState)
    # no state for masked-out leaves: as many tensors as sgd on the decoder alone
    alone = _n_tensors(fo.sgd(0.1, momentum=0.9).init({"decoder": params["decoder"]}))
    assert _n_tensors(state) == alone < _n_tensors(fo.sgd(0.1, momentum=0.9).init(params))
    ours, _ = _run(tx, params, grads)
    ref = _sgd_momentum_reference(params, grads, DECODER, 0.1, 0.9)
    for a, b in zip(ours, ref):
        _assert_trees_close(a, b, 1e-14)


def test_resolve_mask_prefix_and_none():
    params = _params()
    params["encoder"]["norm"]["weight"] = None
    keep = resolve_mask({"encoder": {"layer": True, "norm": None}, "decoder": False}, params)
    assert keep == [False, False, True, True, False]  # decoder.bias, .weight, layer.bias, .weight, norm
    assert resolve_mask([], params) == [False] * 5
    assert resolve_mask(True, params) == [True] * 5


def test_nested_masked():
    params = _params()
    updates = optree.tree_map(torch.ones_like, params)
    outer = {"encoder": True, "decoder": False}
    # the inner mask written for the full params tree (optax #271), a callable seeing None at
    # the leaves the outer mask hides, and a glob
    inner_masks = [
        {"encoder": {"layer": {"weight": True, "bias": False}, "norm": {"weight": True}},
         "decoder": {"weight": True, "bias": True}},
        lambda p: fo.tree.map(lambda x: x.ndim == 2, p),
        "*.weight",
    ]
    expected = {("encoder", "layer", "weight"): 10.0, ("encoder", "layer", "bias"): 1.0,
                ("encoder", "norm", "weight"): 10.0, ("decoder", "weight"): 1.0, ("decoder", "bias"): 1.0}
    for i, inner_mask in enumerate(inner_masks):
        if i == 1:
            expected[("encoder", "norm", "weight")] = 1.0
        else:
            expected[("encoder", "norm", "weight")] = 10.0
        tx = masked(masked(fo.scale(10.0), inner_mask), outer)
        out, _ = tx.update(updates, tx.init(params), params)
        for path, value in expected.items():
            assert torch.equal(_get(out, path), torch.full_like(_get(params, path), value)), (i, path)
    # state only where both masks select (encoder.layer.weight and encoder.norm.weight)
    tx = masked(masked(fo.sgd(0.1, momentum=0.9), inner_masks[0]), outer)
    selected = {"w": params["encoder"]["layer"]["weight"], "n": params["encoder"]["norm"]["weight"]}
    assert _n_tensors(tx.init(params)) == _n_tensors(fo.sgd(0.1, momentum=0.9).init(selected)) > 0


def test_pass_through_versus_freeze():
    params = _params()
    g = optree.tree_map(lambda p: torch.full_like(p, 2.0), params)
    g["encoder"]["layer"]["bias"] = None
    g["decoder"]["bias"] = None
    mask = {"encoder": True, "decoder": False}
    out, _ = masked(fo.sgd(0.5), mask).update(g, masked(fo.sgd(0.5), mask).init(params), params)
    assert torch.equal(out["encoder"]["layer"]["weight"], torch.full((3, 2), -1.0, dtype=torch.float64))
    assert out["decoder"]["weight"] is g["decoder"]["weight"]  # passed through, not zeroed
    assert out["encoder"]["layer"]["bias"] is None and out["decoder"]["bias"] is None
    fz = freeze(mask)
    out, _ = fz.update(g, fz.init(params), params)
    assert torch.equal(out["encoder"]["layer"]["weight"], torch.zeros(3, 2, dtype=torch.float64))
    assert torch.equal(out["encoder"]["norm"]["weight"], torch.zeros(3, dtype=torch.float64))
    assert out["decoder"]["weight"] is g["decoder"]["weight"]
    assert out["encoder"]["layer"]["bias"] is None and out["decoder"]["bias"] is None
    # selective_transform: frozen leaves get zeros and no optimizer state
    st = selective_transform(fo.sgd(0.5, momentum=0.9), freeze_mask="encoder.*")
    state = st.init(params)
    assert _n_tensors(state) == _n_tensors(fo.sgd(0.5, momentum=0.9).init(params["decoder"])) > 0
    out, _ = st.update(g, state, params)
    assert torch.equal(out["encoder"]["norm"]["weight"], torch.zeros(3, dtype=torch.float64))
    assert torch.equal(out["decoder"]["weight"], torch.full((2, 3), -1.0, dtype=torch.float64))


def test_none_updates_do_not_advance_inner_state():
    params = _params()
    tx = masked(fo.scale_by_adam(), "encoder.layer.*")
    state = tx.init(params)
    g = optree.tree_map(torch.ones_like, params)
    g["encoder"]["layer"]["bias"] = None
    out, state = tx.update(g, state, params)
    assert out["encoder"]["layer"]["bias"] is None
    counts = state.inner_state.count
    assert counts["encoder"]["layer"]["weight"].item() == 1 and counts["encoder"]["layer"]["bias"].item() == 0
    assert counts["decoder"]["weight"] is None  # masked out: no counter at all


def test_mask_compatible_extra_args():
    seen = {}

    def update_fn(updates, state, params=None, **extra):
        seen.update(extra)
        return updates, state

    spy = fo.GradientTransformation(lambda p: fo.EmptyState(), update_fn)
    params = {"a": torch.ones(1), "b": torch.ones(1)}
    tags = {"a": torch.zeros(1), "b": torch.zeros(1)}
    for flag in (False, True):
        tx = masked(spy, {"a": True, "b": False}, mask_compatible_extra_args=flag)
        tx.update(params, tx.init(params), params, tags=tags, other=3, donate=False)
        assert (seen["tags"]["b"] is None) == flag and seen["tags"]["a"] is tags["a"]
        assert seen["other"] == 3 and seen["donate"] is False


# ---------------------------------------------------------------------------------
# partition


TRANSFORMS = {
    "decay": fo.adamw(1e-2, weight_decay=0.1),
    "no_decay": fo.adamw(1e-2, weight_decay=0.0),
    "momentum": fo.sgd(0.05, momentum=0.9),
    "unused": fo.adam(1e-2),
}
LABELS = {("encoder", "layer", "weight"): "decay", ("encoder", "layer", "bias"): "no_decay",
          ("encoder", "norm", "weight"): "no_decay", ("decoder", "weight"): "momentum",
          ("decoder", "bias"): "momentum"}
LABEL_FORMS = {
    "tree": {"encoder": {"layer": {"weight": "decay", "bias": "no_decay"}, "norm": {"weight": "no_decay"}},
             "decoder": {"weight": "momentum", "bias": "momentum"}},
    "prefix": {"encoder": {"layer": {"weight": "decay", "bias": "no_decay"}, "norm": "no_decay"},
               "decoder": "momentum"},
    "callable": lambda p: {"encoder": {"layer": {"weight": "decay", "bias": "no_decay"},
                                       "norm": {"weight": "no_decay"}}, "decoder": "momentum"},
    "rules": label_by_name([("decoder.*", "momentum"), ("*.bias", "no_decay"), ("*norm*", "no_decay")],
                           default="decay"),
    "rules_dict": label_by_name({"decoder.*": "momentum", "*.bias": "no_decay", "*.norm.*": "no_decay",
                                 "*": "decay"}),
}


@pytest.mark.parametrize("form", list(LABEL_FORMS))
def test_partition_routes_each_leaf(form):
    params = _params()
    grads = _grads(params)
    tx = partition(TRANSFORMS, LABEL_FORMS[form])
    ours, state = _run(tx, params, grads)
    assert isinstance(state, PartitionState) and list(state.inner_states) == list(TRANSFORMS)
    for label, group_tx in TRANSFORMS.items():
        paths = [p for p, lab in LABELS.items() if lab == label]
        # the group's state has tensors for its own leaves only
        sub = {"/".join(p): _get(params, p) for p in paths}
        assert _n_tensors(state.inner_states[label]) == _n_tensors(group_tx.init(sub))
        if not paths:
            continue
        alone, _ = _run(group_tx, sub, [{"/".join(p): _get(g, p) for p in paths} for g in grads])
        for step in range(STEPS):
            for p in paths:
                assert torch.equal(_get(ours[step], p), alone[step]["/".join(p)]), (form, label, step, p)


def test_no_decay_recipe_matches_torch_adamw_param_groups():
    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("fc", torch.nn.Linear(4, 3))
    model.add_module("norm", torch.nn.LayerNorm(3))
    model.add_module("head", torch.nn.Linear(3, 2))
    model = model.double()
    named = {n: p.detach().clone() for n, p in model.named_parameters()}
    tx = partition({"decay": fo.adamw(1e-2, weight_decay=0.1), "no_decay": fo.adamw(1e-2, weight_decay=0.0)},
                   label_by_name([("*.bias", "no_decay"), ("*norm*", "no_decay")], default="decay"))
    gen = torch.Generator().manual_seed(3)
    grads = [{n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in named.items()}
             for _ in range(STEPS)]
    ours, _ = _run(tx, named, grads)

    leaves = {n: p.clone().requires_grad_(True) for n, p in named.items()}
    no_decay = {"fc.bias", "norm.weight", "norm.bias", "head.bias"}
    opt = torch.optim.AdamW([
        {"params": [leaves[n] for n in leaves if n not in no_decay], "weight_decay": 0.1},
        {"params": [leaves[n] for n in leaves if n in no_decay], "weight_decay": 0.0}], lr=1e-2)
    for step, g in enumerate(grads):
        for n, leaf in leaves.items():
            leaf.grad = g[n].clone()
        opt.step()
        for n, leaf in leaves.items():
            ref = leaf.detach()
            assert ((ours[step][n] - ref).abs().max() / ref.abs().max()).item() <= 1e-10, (step, n)


def test_donate_matches_pure_and_pure_leaves_inputs_untouched():
    params = _params()
    grads = _grads(params, steps=6)
    tx = partition(TRANSFORMS, LABEL_FORMS["rules"])
    state_pure = tx.init(params)
    state_don = tx.init(params)
    p = params
    for g in grads:
        old_state = state_pure
        snapshot = (_clone(g), _clone(old_state), _clone(p))
        u_pure, state_pure = tx.update(g, old_state, p)
        for before, after in zip(snapshot, (g, old_state, p)):
            _assert_trees_close(after, before, 0.0)
        u_don, state_don = tx.update(_clone(g), state_don, p, donate=True)
        _assert_trees_close(u_don, u_pure, 1e-15)
        _assert_trees_close(state_don, state_pure, 1e-15)
        p = fo.apply_updates(p, u_pure)


def test_pure_update_does_not_modify_state_buffers():
    params = _params()
    tx = partition(TRANSFORMS, LABEL_FORMS["tree"])
    state = tx.init(params)
    g = _grads(params, steps=2)[1]
    _, state = tx.update(g, state, params)
    before = _clone(state)
    tx.update(g, state, params)
    _assert_trees_close(state, before, 0.0)


def test_aliases():
    assert multi_transform is partition and MultiTransformState is PartitionState


def test_compile_fullgraph_matches_eager():
    params = {"fc.weight": torch.randn(3, 2, dtype=torch.float64), "fc.bias": torch.randn(3, dtype=torch.float64)}
    tx = partition({"adam": fo.adam(1e-2), "sgd": fo.sgd(0.1, momentum=0.9)},
                   label_by_name([("*.bias", "sgd")], default="adam"))
    grads = [{n: torch.randn(p.shape, dtype=torch.float64) for n, p in params.items()} for _ in range(3)]
    torch._dynamo.reset()
    step = torch.compile(tx.update, fullgraph=True, backend="aot_eager")
    s_eager = s_comp = tx.init(params)
    for g in grads:
        u_eager, s_eager = tx.update(g, s_eager, params)
        u_comp, s_comp = step(g, s_comp, params)
        _assert_trees_close(u_comp, u_eager, 1e-12)
        _assert_trees_close(s_comp, s_eager, 1e-12)



def test_compile_fullgraph_with_whole_subtrees_masked_out():
    # a sub-dict with no selected leaf becomes a dict of Nones in the inner trees: torch 2.13's
    # dynamo needs functional_optim._compat to trace it (else "length mismatch")
    params = {"enc": {"w": torch.randn(3, 2, dtype=torch.float64)},
              "dec": {"w": torch.randn(3, dtype=torch.float64), "b": torch.randn(2, dtype=torch.float64)}}
    tx = partition({"train": fo.adam(1e-2), "frozen": fo.set_to_zero(), "unused": fo.sgd(0.1)},
                   {"enc": "frozen", "dec": "train"})
    gen = torch.Generator().manual_seed(3)
    grads = [{"enc": {"w": torch.randn(3, 2, generator=gen, dtype=torch.float64)},
              "dec": {"w": torch.randn(3, generator=gen, dtype=torch.float64),
                      "b": None if i == 1 else torch.randn(2, generator=gen, dtype=torch.float64)}}
             for i in range(3)]
    torch._dynamo.reset()
    step = torch.compile(tx.update, fullgraph=True, backend="aot_eager")
    s_eager = s_comp = tx.init(params)
    for g in grads:
        u_eager, s_eager = tx.update(g, s_eager, params)
        u_comp, s_comp = step(g, s_comp, params)
        _assert_trees_close(u_comp, u_eager, 1e-12)
        _assert_trees_close(s_comp, s_eager, 1e-12)
    assert torch.equal(u_eager["enc"]["w"], torch.zeros(3, 2, dtype=torch.float64))

def test_func_grad_through_unrolled_masked_sgd():
    target = {"a": torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64),
              "b": torch.tensor([[1.0, -0.5], [0.25, 3.0]], dtype=torch.float64)}
    tx = masked(fo.sgd(0.1, momentum=0.5), {"a": True, "b": False})

    def loss_after_steps(p0):
        p, state = p0, tx.init(p0)
        for _ in range(3):
            g = {k: (p[k] - target[k]) + 0.1 * p[k] ** 3 for k in p}
            u, state = tx.update(g, state, p)
            u = {"a": u["a"], "b": -0.05 * u["b"]}  # masked-out leaf: the raw gradient, scaled here
            p = fo.apply_updates(p, u)
        return sum((torch.sin(p[k]) + 0.5 * (p[k] - target[k]) ** 2).sum() for k in p)

    gen = torch.Generator().manual_seed(0)
    p0 = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in target.items()}
    grad = torch.func.grad(loss_after_steps)(p0)
    h = 1e-5
    for k in p0:
        for i in range(p0[k].numel()):
            plus = {kk: v.clone() for kk, v in p0.items()}
            minus = {kk: v.clone() for kk, v in p0.items()}
            plus[k].view(-1)[i] += h
            minus[k].view(-1)[i] -= h
            fd = (loss_after_steps(plus) - loss_after_steps(minus)) / (2 * h)
            an = grad[k].view(-1)[i]
            assert math.isclose(an.item(), fd.item(), rel_tol=1e-6, abs_tol=1e-9), (k, i)
            assert abs(an.item()) > 1e-3  # every element's gradient is informative


# ---------------------------------------------------------------------------------
# bad input


def test_bad_inputs():
    params = _params()
    g = optree.tree_map(torch.ones_like, params)
    with pytest.raises(ValueError, match="mask does not match"):
        masked(fo.scale(1.0), {"encoder": True}).init(params)
    with pytest.raises(ValueError, match="mask has an entry .decoder.extra. that matches no params leaf"):
        masked(fo.scale(1.0), {"encoder": True, "decoder": {"weight": True, "bias": True, "extra": True}}).init(params)
    with pytest.raises(ValueError, match="mask does not match"):
        masked(fo.scale(1.0), {"encoder": True, "decoder": [True, False]}).init(params)
    with pytest.raises(TypeError, match="inner must be a GradientTransformation"):
        masked(fo.sgd, True)
    with pytest.raises(TypeError, match=r"mask leaves must be bools.*'decoder.bias'"):
        masked(fo.scale(1.0), {"encoder": True, "decoder": 1}).init(params)
    with pytest.raises(TypeError, match="mask leaves must be bools"):
        masked(fo.scale(1.0), 5).init(params)
    with pytest.raises(TypeError, match="static"):
        masked(fo.scale(1.0), {"encoder": torch.tensor(True), "decoder": False}).init(params)
    with pytest.raises(TypeError, match="mask must be a glob string or a list/tuple of glob strings"):
        masked(fo.scale(1.0), ["*.bias", True]).init(params)
    with pytest.raises(TypeError, match="mask leaves must be bools.*glob"):
        masked(fo.scale(1.0), {"encoder": "*.bias", "decoder": True}).init(params)
    with pytest.raises(TypeError, match="patterns must be a glob string"):
        mask_by_name(5)
    with pytest.raises(TypeError, match=r"rules\[0\] must be a \(glob string, label\) pair"):
        label_by_name([(3, "a")])
    with pytest.raises(TypeError, match="rules must be"):
        label_by_name("*.bias")
    # a glob matching nothing is a typo until said otherwise
    with pytest.raises(ValueError, match=r"pattern '\*\.bais' matched no leaf name.*'decoder.bias'"):
        masked(fo.scale(1.0), "*.bais").init(params)
    with pytest.raises(ValueError, match=r"rules\[1\] \('\*norm\*', 'b'\) matched no leaf"):
        partition({"a": fo.sgd(0.1), "b": fo.sgd(0.1)},
                  label_by_name([("*.bias", "b"), ("*norm*", "b")], default="a")).init({"fc.bias": torch.ones(1)})
    ok = masked(fo.scale(2.0), mask_by_name(["*.bias", "*.bais"], allow_unmatched=True))
    assert torch.equal(ok.update(g, ok.init(params), params)[0]["decoder"]["bias"], torch.full((2,), 2.0,
                                                                                              dtype=torch.float64))
    # labels
    with pytest.raises(ValueError, match=r"param_labels: leaf 'decoder.bias' has label 'oops'.*not a key"):
        partition({"a": fo.sgd(0.1)}, {"encoder": "a", "decoder": {"weight": "a", "bias": "oops"}}).init(params)
    with pytest.raises(ValueError, match=r"leaf 'fc.weight' matches no rule and no default"):
        partition({"a": fo.sgd(0.1)}, label_by_name([("*.bias", "a")])).init(
            {"fc.weight": torch.ones(1), "fc.bias": torch.ones(1)})
    with pytest.raises(ValueError, match="param_labels: leaf 'decoder.bias' has label None"):
        partition({"a": fo.sgd(0.1)}, {"encoder": "a", "decoder": {"weight": "a", "bias": None}}).init(params)
    with pytest.raises(ValueError, match="param_labels does not match"):
        partition({"a": fo.sgd(0.1)}, {"encoder": "a"}).init(params)
    with pytest.raises(TypeError, match=r"transforms\['a'\] must be a GradientTransformation"):
        partition({"a": "sgd"}, "a")
    with pytest.raises(TypeError, match="transforms must be a mapping"):
        partition([fo.sgd(0.1)], "a")
    # states and trees that do not belong together
    tx = partition({"a": fo.sgd(0.1)}, "a")
    with pytest.raises(ValueError, match="state must be a PartitionState"):
        tx.update(g, MaskedState(None), params)
    with pytest.raises(ValueError, match="state must be a MaskedState"):
        masked(fo.sgd(0.1), True).update(g, tx.init(params), params)
    with pytest.raises(ValueError, match="params does not match the structure of the updates"):
        tx.update(g, tx.init(params), {"encoder": params["encoder"]})
