"""Optimizer hooks and pickling, checked live against torch.optim.

Hooks: the same state_dict, load_state_dict and step hooks (one of each prepended, one
post-hook returning a new state_dict, a load pre-hook returning a changed one, a step
pre-hook replacing the arguments, a removed handle) on ``adapters.AdamW`` and
``torch.optim.AdamW`` record the same calls, in the same order, with the same arguments,
and have the same effects.

Pickling: ``copy.deepcopy`` and ``pickle`` of ``(model, optimizer)`` after 3 steps give an
optimizer over the copied model's params, with the same state_dict, without the hooks
(as torch's), that goes on exactly as the original (0 difference); the drop-ins' copies
also go on as torch's copies (1e-12 relative). For the drop-ins and a custom chain
(``fo.chain(fo.clip_by_global_norm(1.0), fo.adamw(...))``, its functions closures),
eager and compiled (the compiled step is dropped and rebuilt; a compiled case is copied
one way only, each copy compiling its own step).
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import adapters
import functional_optim as fo
from adapter_harness import max_rel_diff

TOL = 1e-12  # ours vs torch's rounding (fused kernels vs torch's for-loop), float64


def net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()


X = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


def run(opt, model, steps):
    out = []
    for _ in range(steps):
        opt.zero_grad()
        model(X).pow(2).mean().backward()
        opt.step()
        out.append([p.detach().clone() for p in model.parameters()])
    return out


# -- hooks -----------------------------------------------------------------------------

def attach_hooks(opt, log):
    """The same hooks on any optimizer; each records what it sees in ``log`` (no tensors)."""

    def summary(state_dict):
        return sorted(state_dict), sorted(state_dict["state"]), state_dict["param_groups"][0]["lr"]

    def sd_pre(o):
        log.append(("sd_pre", o is opt))

    def sd_pre_first(o):
        log.append(("sd_pre_first", o is opt))

    def sd_post(o, state_dict):
        log.append(("sd_post", summary(state_dict)))
        state_dict["in_place"] = 1  # modified in place, returns None

    def sd_post_new(o, state_dict):
        log.append(("sd_post_new", state_dict.get("in_place")))
        return {**state_dict, "replaced": True}

    def sd_post_removed(o, state_dict):
        log.append(("removed",))

    def load_pre(o, state_dict):
        log.append(("load_pre", summary(state_dict), "extra" in state_dict))
        state_dict["extra"] = 1  # the caller's dict is a shallow copy: not seen by the caller

    def load_pre_new(o, state_dict):
        log.append(("load_pre_new", "extra" in state_dict))
        groups = [{**g, "lr": 0.2} for g in state_dict["param_groups"]]
        return {**state_dict, "param_groups": groups}

    def load_post(o):
        log.append(("load_post", o.param_groups[0]["lr"]))

    def load_post_first(o):
        log.append(("load_post_first", o.param_groups[0]["lr"]))

    def step_pre(o, args, kwargs):
        log.append(("step_pre", len(args), sorted(kwargs), len(o.state)))
        return args, {"closure": lambda: torch.tensor(7.0)}  # new arguments for the step

    def step_post(o, args, kwargs):
        log.append(("step_post", len(args), sorted(kwargs), len(o.state)))

    opt.register_state_dict_pre_hook(sd_pre)
    opt.register_state_dict_pre_hook(sd_pre_first, prepend=True)
    opt.register_state_dict_post_hook(sd_post)
    opt.register_state_dict_post_hook(sd_post_new)
    opt.register_state_dict_post_hook(sd_post_removed, prepend=True).remove()
    opt.register_load_state_dict_pre_hook(load_pre)
    opt.register_load_state_dict_pre_hook(load_pre_new)
    opt.register_load_state_dict_post_hook(load_post)
    opt.register_load_state_dict_post_hook(load_post_first, prepend=True)
    opt.register_step_pre_hook(step_pre)
    opt.register_step_post_hook(step_post)


def hooked_run(kind):
    model = net()
    cls = adapters.AdamW if kind == "ours" else torch.optim.AdamW
    opt = cls(model.parameters(), lr=0.05)
    log = []
    attach_hooks(opt, log)
    model(X).pow(2).mean().backward()
    loss = opt.step()
    state_dict = opt.state_dict()
    saved = {**state_dict, "state": dict(state_dict["state"])}
    opt.load_state_dict(saved)
    log.append(("caller_dict_unchanged", "extra" not in saved, saved["param_groups"][0]["lr"]))
    log.append(("lr_after_load", opt.param_groups[0]["lr"]))
    return log, loss, state_dict, opt, model


def test_hooks_fire_as_torchs():
    ours_log, ours_loss, ours_sd, ours, model = hooked_run("ours")
    ref_log, ref_loss, ref_sd, ref, ref_model = hooked_run("torch")
    assert ours_log == ref_log
    assert [entry[0] for entry in ours_log] == [
        "step_pre", "step_post", "sd_pre_first", "sd_pre", "sd_post", "sd_post_new", "load_pre",
        "load_pre_new", "load_post_first", "load_post", "caller_dict_unchanged", "lr_after_load"]
    assert float(ours_loss) == float(ref_loss) == 7.0  # the pre-hook's closure ran
    assert ours_sd["replaced"] is ref_sd["replaced"] is True and ours_sd["in_place"] == 1
    # the load pre-hook's lr reached the optimizer, which steps with it as torch's does
    assert ours.param_groups[0]["lr"] == ref.param_groups[0]["lr"] == 0.2
    for opt in (ours, ref):
        opt._optimizer_step_pre_hooks.clear()  # run() steps without the closure hook
    assert max_rel_diff(run(ours, model, 2), run(ref, ref_model, 2)) <= TOL


def test_global_step_hooks_fire():
    calls = []
    pre = register_optimizer_step_pre_hook(lambda o, a, k: calls.append(("pre", type(o))))
    post = register_optimizer_step_post_hook(lambda o, a, k: calls.append(("post", type(o))))
    try:
        model = net()
        opt = adapters.FunctionalOptimizer(model.parameters(), fo.adamw, lr=0.05)
        run(opt, model, 1)
    finally:
        pre.remove()
        post.remove()
    assert calls == [("pre", adapters.FunctionalOptimizer), ("post", adapters.FunctionalOptimizer)]


# -- pickling ----------------------------------------------------------------------------

def chain(params, compile=False):
    return adapters.FunctionalOptimizer(
        params, fo.chain(fo.clip_by_global_norm(1.0), fo.adamw(0.05, weight_decay=0.1)), compile=compile)


CASES = {  # ours, torch's (None: no torch counterpart)
    "adamw": (lambda ps: adapters.AdamW(ps, lr=0.05), lambda ps: torch.optim.AdamW(ps, lr=0.05)),
    "sgd-momentum": (lambda ps: adapters.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
                     lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True)),
    "adagrad": (lambda ps: adapters.Adagrad(ps, lr=0.05), lambda ps: torch.optim.Adagrad(ps, lr=0.05)),
    "chain": (chain, None),
    "schedule": (lambda ps: adapters.FunctionalOptimizer(ps, fo.adamw, lr=fo.cosine_decay_schedule(0.1, 10)), None),
    "adamw-compiled": (lambda ps: adapters.AdamW(ps, lr=0.05, compile=True),
                       lambda ps: torch.optim.AdamW(ps, lr=0.05)),
    "chain-compiled": (lambda ps: chain(ps, compile=True), None),
}


def assert_same_state_dict(a, b):
    """Equal state (tensors exactly) and groups (a schedule: by type, it is a new closure)."""
    assert sorted(a["state"]) == sorted(b["state"])
    for idx, entry in b["state"].items():
        assert sorted(a["state"][idx]) == sorted(entry)
        assert all(torch.equal(a["state"][idx][k], v) for k, v in entry.items())
    for x, y in zip(a["param_groups"], b["param_groups"], strict=True):
        assert sorted(x) == sorted(y)
        assert all(x[k] == y[k] if not callable(y[k]) else type(x[k]) is type(y[k]) for k in y)


# compiled cases copy one way each (every copy compiles its own step: seconds)
WAYS = {"adamw-compiled": ("deepcopy",), "chain-compiled": ("pickle",)}


def copies(pair, ways=("deepcopy", "pickle")):
    """``pair`` through ``copy.deepcopy`` and through ``pickle``, as torch pickles optimizers."""
    made = {"deepcopy": lambda: copy.deepcopy(pair), "pickle": lambda: pickle.loads(pickle.dumps(pair))}
    return [made[way]() for way in ways]


@pytest.mark.parametrize("name", list(CASES))
def test_pickled_optimizer_goes_on_as_the_original(name):
    make_ours, make_torch = CASES[name]
    ways = WAYS.get(name, ("deepcopy", "pickle"))
    model = net()
    ours = make_ours(model.parameters())
    ours.register_step_post_hook(lambda *args: None)
    run(ours, model, 3)
    copied = copies((model, ours), ways)
    before = copy.deepcopy(ours.state_dict())
    if make_torch is not None:
        ref_model = net()
        ref = make_torch(ref_model.parameters())
        run(ref, ref_model, 3)
        ref_copies = copies((ref_model, ref), ways)
    expected = run(ours, model, 3)
    for i, (copy_model, copy_opt) in enumerate(copied):
        assert type(copy_opt) is type(ours)
        assert all(a is b for a, b in zip(copy_model.parameters(), copy_opt.param_groups[0]["params"]))
        assert not copy_opt._optimizer_step_post_hooks  # as torch: hooks are not pickled
        assert copy_opt._groups[0].engine.kind == ours._groups[0].engine.kind
        assert_same_state_dict(copy_opt.state_dict(), before)
        trajectory = run(copy_opt, copy_model, 3)
        assert max_rel_diff(trajectory, expected) == 0.0
        if make_torch is not None:
            assert not ref_copies[i][1]._optimizer_step_post_hooks
            assert max_rel_diff(trajectory, run(ref_copies[i][1], ref_copies[i][0], 3)) <= TOL
