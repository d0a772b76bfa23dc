"""Bad input to the adapter: clear errors, and nothing changed by a call that failed.

A param in two groups, unknown or invalid hyperparameters, a non-leaf tensor, an empty
param list, a transform that is not one; state_dicts whose groups, group sizes or state
shapes do not match (the optimizer's state_dict and its further trajectory are exactly
as if the load had not been tried).
"""

from __future__ import annotations

import pytest
import torch

import adapters
import functional_optim as fo
from adapter_harness import (assert_state_dicts_close, groups, leaves, make_grads, make_params, max_rel_diff,
                             roundtrip, train)


def my_opt(lr=1e-3, clip=1.0):
    return fo.chain(fo.clip_by_global_norm(clip), fo.adam(lr=lr))


# -- construction and param groups ----------------------------------------------------

def test_param_in_two_groups():
    params = leaves(make_params())
    with pytest.raises(ValueError, match="more than one parameter group"):
        adapters.Adam([{"params": params[:2]}, {"params": params[1:3]}])
    opt = adapters.Adam([{"params": params[:2]}], lr=0.1)
    before = roundtrip(opt.state_dict())
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [params[2], params[0]]})
    assert len(opt.param_groups) == 1
    assert_state_dicts_close(opt.state_dict(), before)
    opt.add_param_group({"params": params[2:]})  # the group without the duplicate is fine
    train(opt, params, make_grads(2))


def test_unknown_hyperparameter_names_it_and_the_accepted_ones():
    params = leaves(make_params())
    with pytest.raises(TypeError, match=r"unknown hyperparameter\(s\) \['momentum'\] for adamw") as error:
        adapters.FunctionalOptimizer(params, fo.adamw, lr=1e-3, momentum=0.9)
    assert "weight_decay" in str(error.value)  # the accepted names are listed
    with pytest.raises(TypeError, match=r"\['clipp'\] for my_opt; accepted: \['clip', 'lr'\]"):
        adapters.FunctionalOptimizer(params, my_opt, clipp=1.0)
    with pytest.raises(TypeError, match="momentum"):
        adapters.Adam(params, momentum=0.9)  # torch's signature


def test_hyperparameters_with_a_fixed_transform():
    with pytest.raises(TypeError, match=r"hyperparameters \['lr'\] need a transform factory"):
        adapters.FunctionalOptimizer(leaves(make_params()), fo.adam(1e-3), lr=1e-3)


def test_not_a_transform():
    params = leaves(make_params())
    with pytest.raises(TypeError, match="transform must be a GradientTransformation or a factory"):
        adapters.FunctionalOptimizer(params, 0.1)
    with pytest.raises(TypeError, match="factory returned dict, expected a GradientTransformation"):
        adapters.FunctionalOptimizer(params, lambda lr=0.1: {"lr": lr})


def test_non_leaf_tensor():
    leaf = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match="can't optimize a non-leaf Tensor"):
        adapters.SGD([leaf * 2], lr=0.1)
    with pytest.raises(ValueError, match="can't optimize a non-leaf Tensor"):
        adapters.FunctionalOptimizer([leaf * 2], fo.adamw)


def test_empty_param_list():
    with pytest.raises(ValueError, match="empty parameter list"):
        adapters.AdamW([])
    with pytest.raises(ValueError, match="empty parameter list"):
        adapters.FunctionalOptimizer(iter([]), my_opt)


def test_invalid_values_name_the_argument():
    params = leaves(make_params())
    with pytest.raises(ValueError, match="Invalid learning rate: -1.0"):  # torch's message (drop-in)
        adapters.Adam(params, lr=-1.0)
    with pytest.raises(ValueError, match="Invalid lr: -1.0"):
        adapters.FunctionalOptimizer(params, fo.adam, lr=-1.0)
    with pytest.raises(ValueError, match="Invalid momentum"):
        adapters.SGD(params, lr=0.1, momentum=-0.5)
    with pytest.raises(ValueError, match="capturable=True is not supported"):
        adapters.Adam(params, capturable=True)
    # an invalid per-group override: the group is not added, the optimizer is unchanged
    opt = adapters.Adam(params[:2], lr=0.1)
    with pytest.raises(ValueError, match="beta parameter at index 0"):
        opt.add_param_group({"params": params[2:], "betas": (1.0, 0.9)})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": params[2:], "betas": (0.5, 0.9)})
    train(opt, params, make_grads(2))


# -- failed loads ---------------------------------------------------------------------------

def _trained(compile, steps=5):
    params = leaves(make_params())
    overrides = [dict(lr=0.1), dict(weight_decay=0.1), dict(amsgrad=True)]
    opt = adapters.Adam(groups(params, overrides), lr=1e-2, compile=compile)
    train(opt, params, make_grads(steps))
    return opt, params


def _assert_unchanged_by(bad_state_dict, error, match, compile):
    opt, params = _trained(compile)
    twin, twin_params = _trained(compile)
    before = roundtrip(opt.state_dict())
    with pytest.raises(error, match=match):
        opt.load_state_dict(bad_state_dict)
    assert_state_dicts_close(opt.state_dict(), before)
    grads = make_grads(5, seed=7)
    assert max_rel_diff(train(opt, params, grads), train(twin, twin_params, grads)) == 0.0


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_load_with_another_number_of_groups(compile):
    good, _ = _trained(False)
    bad = roundtrip(good.state_dict())
    bad["param_groups"] = bad["param_groups"][:2]
    _assert_unchanged_by(bad, ValueError, "different number of parameter groups", compile)


def test_load_with_a_group_of_another_size():
    good, _ = _trained(False)
    bad = roundtrip(good.state_dict())
    bad["param_groups"][1]["params"] = bad["param_groups"][1]["params"][:1]
    _assert_unchanged_by(bad, ValueError, "doesn't match the size of optimizer's group", False)


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_load_with_a_state_of_another_shape(compile):
    # group 0 loads fine (and its saved lr differs); group 1's state does not fit: nothing,
    # not even group 0's hyperparameters, may change
    good, _ = _trained(False, steps=8)
    bad = roundtrip(good.state_dict())
    bad["param_groups"][0]["lr"] = 0.5
    bad["state"][3]["exp_avg"] = torch.zeros(2, 2, dtype=torch.float64)
    _assert_unchanged_by(bad, ValueError, r"shape \(2, 2\), expected \(3, 2, 2, 2\)", compile)


def test_load_torch_checkpoint_of_another_shape():
    params = leaves(make_params())
    ref = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    train(ref, params, make_grads(3))
    bad = roundtrip(ref.state_dict())
    bad["state"][1]["momentum_buffer"] = torch.zeros(4, dtype=torch.float64)
    ours_params = leaves(make_params())
    ours = adapters.SGD(ours_params, lr=0.2, momentum=0.5)
    train(ours, ours_params, make_grads(3, seed=4))
    before = roundtrip(ours.state_dict())
    with pytest.raises(ValueError, match=r"shape \(4,\), expected \(5,\)"):
        ours.load_state_dict(bad)
    assert_state_dicts_close(ours.state_dict(), before)
    assert ours.param_groups[0]["lr"] == 0.2


def test_load_with_an_invalid_hyperparameter():
    good, _ = _trained(False)
    bad = roundtrip(good.state_dict())
    bad["param_groups"][0]["lr"] = 0.5
    bad["param_groups"][2]["betas"] = (1.5, 0.9)
    _assert_unchanged_by(bad, ValueError, "beta parameter at index 0", False)
