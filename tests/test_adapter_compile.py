"""The adapter under torch.compile, and the steady state of a step.

* a user's ``torch.compile(opt.step, fullgraph=True)`` with a 0-d tensor lr changed every
  step: no graph break, one compilation in 200 steps, the eager trajectory; and its
  writes to 0-d float64 state (which torch 2.13's compile drops when done in place);
* the adapter's own compiled step (``compile=True``) driven by OneCycleLR (float lr and
  cycled betas): one graph, no recompilation in 200 steps, the eager trajectory;
* steady state: the data pointers of params, grads and state never move, and an eager
  step allocates no tensor of a param's size.
"""

from __future__ import annotations

import optree
import pytest
import torch
from torch._dynamo.backends.registry import lookup_backend
from torch._dynamo.utils import counters
from torch._guards import CompileContext

import adapters
import functional_optim as fo
from adapter_harness import (Allocations, groups, leaves, make_grads, make_params, max_rel_diff, max_tensor_rel_diff,
                             state_tensors, train)
from compile_counting import engine_graphs

STEPS = 200
# Compiled vs eager, float64 model, 200 steps of a small regression. The compiled graph
# fuses the update (other rounding: ~1e-16 per step), and training amplifies any
# difference (grads depend on params): measured max relative difference 7e-14 for the
# adapter's compiled step. (In float32 the same runs differ by 2e-8 after 10 steps and
# 1.4e-5 after 200: rounding, amplified the same way.)
TOL = 1e-12


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()


def _batches(n):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 32, 6, generator=gen, dtype=torch.float64)
    return x, x[..., :3].sum(-1, keepdim=True).sin()


def _train(model, opt, step_fn, before_step=None, after_step=None):
    xs, ys = _batches(STEPS)
    trajectory = []
    for i in range(STEPS):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(xs[i]), ys[i]).backward()
        if before_step is not None:
            before_step(i)
        step_fn()
        if after_step is not None:
            after_step(i)
        trajectory.append([p.detach().clone() for p in model.parameters()])
    return trajectory


class CountingBackend:
    """inductor, counting compilations by dynamo's compile id (frame, compile number).

    A compilation may call the backend more than once: torch's float-tensorify pass can
    restart the analysis (attempt ``0/0_1``), which is not a recompilation.
    """

    def __init__(self):
        self.compile_ids, self.calls = set(), 0

    def __call__(self, gm, example_inputs):
        compile_id = CompileContext.current_compile_id()
        self.compile_ids.add((compile_id.frame_id, compile_id.frame_compile_id))
        self.calls += 1
        return lookup_backend("inductor")(gm, example_inputs)


def test_user_compiled_step_fullgraph_compiles_once():
    def run(compiled):
        model = _model()
        # in the params' dtype: with a float32 lr, torch's eager loop (which the eager drop-in
        # runs) rounds the step size in float32, the traced functional update in float64
        lr = torch.tensor(3e-3, dtype=torch.float64)
        opt = adapters.Adam(model.parameters(), lr=lr, weight_decay=1e-3)
        backend = CountingBackend()
        step = torch.compile(opt.step, fullgraph=True, backend=backend) if compiled else opt.step

        def schedule(i):  # a schedule changes the lr tensor in place before every step
            lr.fill_(3e-3 * (1 + i) / 20 if i < 20 else 3e-3 * 0.99 ** (i - 20))
            if i == 1:
                calls_after_first_step.append(backend.calls)

        calls_after_first_step = []
        return _train(model, opt, step, before_step=schedule), backend, calls_after_first_step

    torch._dynamo.reset()
    counters.clear()
    compiled, backend, calls_after_first_step = run(True)
    # one compilation (the first step's: the state existed before it), none after it
    assert backend.compile_ids == {(0, 0)} and backend.calls == calls_after_first_step[0]
    assert counters["stats"]["unique_graphs"] == 1
    assert not counters["graph_break"]
    eager, _, _ = run(False)
    assert max_rel_diff(compiled, eager) <= TOL


def clipped_adam(lr=1e-3, max_norm=1.0):
    return fo.chain(fo.clip_by_global_norm(max_norm), fo.adam(lr=lr))


def test_user_compiled_step_updates_zero_dim_float64_state():
    # a scalar float64 param (its Adam moments are 0-d float64 tensors) and the clip's 0-d
    # float64 norm: torch.compile (2.13) drops in-place writes to such inputs, so a step
    # that wrote them in place would never update them (as a compiled torch.optim.Adam.step)
    grads = make_grads(6, none_every=None)
    results = []
    for compiled in (False, True):
        params = leaves(make_params())
        lr = torch.tensor(0.05)
        opt = adapters.FunctionalOptimizer(params, clipped_adam, lr=lr, max_norm=2.0)
        step = torch.compile(opt.step, fullgraph=True, backend="aot_eager") if compiled else opt.step
        results.append((train(opt, params, grads, step_fn=step), opt.state[params[0]]))
    (eager, eager_state), (compiled, compiled_state) = results
    assert compiled_state["ScaleByAdamState.nu"].item() > 0
    assert compiled_state["ClipByGlobalNormState.global_norm"].item() > 2
    assert all(torch.equal(eager_state[k], compiled_state[k]) for k in eager_state)
    assert max_rel_diff(compiled, eager) <= TOL


def test_adapter_compiled_step_with_one_cycle_never_recompiles():
    def run(compile):
        model = _model()
        opt = adapters.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05, compile=compile)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=STEPS)
        lrs = []

        def schedule(i):
            sched.step()
            lrs.append((opt.param_groups[0]["lr"], opt.param_groups[0]["betas"]))

        compiled_opt.append(opt)
        return _train(model, opt, opt.step, after_step=schedule), lrs

    compiled_opt = []

    compiled, lrs = run(True)
    assert isinstance(lrs[0][0], float) and len(set(lrs)) >= STEPS - 1  # lr and beta1 change every step
    assert len(engine_graphs(compiled_opt[0])) == 1
    eager, _ = run(False)
    assert max_rel_diff(compiled, eager) <= TOL


def _pointers(opt, params):
    # the per-param state view (torch's float ``step`` is exported as a fresh copy of our
    # int32 counter, so it is left out) and the state the engine keeps
    engine = [t.data_ptr() for rt in opt._groups for t in optree.tree_leaves(rt.state)]
    return ([p.data_ptr() for p in params], [p.grad.data_ptr() for p in params],
            [t.data_ptr() for t in state_tensors(opt, skip=("step",))], engine)


STEADY = {
    "adam": (adapters.Adam, dict(lr=1e-2), [dict(amsgrad=True), dict(weight_decay=0.1), {}]),
    "adamw": (adapters.AdamW, dict(lr=1e-2), [{}, dict(maximize=True), {}]),
    "sgd": (adapters.SGD, dict(lr=1e-2, momentum=0.9), [dict(nesterov=True), dict(weight_decay=0.1),
                                                        dict(dampening=0.5)]),
}


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("name", list(STEADY))
def test_steady_state_buffers_do_not_move(name, compile):
    cls, defaults, overrides = STEADY[name]
    grads = make_grads(12, none_every=None)
    params = leaves(make_params())
    opt = cls(groups(params, overrides), **defaults, compile=compile)
    train(opt, params, grads[:2])
    before = _pointers(opt, params)
    assert len(before[2]) >= len(params) and len(before[3]) >= len(params)
    for g in grads[2:]:
        for p, gi in zip(params, g):
            p.grad.copy_(gi)  # as a backward accumulating into the kept grads would
        opt.step()
        assert _pointers(opt, params) == before


def clipped_adamw(lr=1e-3, max_norm=1.0, weight_decay=1e-2):
    return fo.chain(fo.clip_by_global_norm(max_norm), fo.adamw(lr=lr, weight_decay=weight_decay))


@pytest.mark.parametrize("name", list(STEADY) + ["user-chain"])
def test_eager_step_allocates_nothing_param_sized(name):
    shapes = [(64, 48), (48,), (4, 8, 5, 5), ()]
    grads = make_grads(6, shapes=shapes, none_every=None)
    params = leaves(make_params(shapes=shapes))
    if name == "user-chain":
        opt = adapters.FunctionalOptimizer(groups(params, [{}, dict(max_norm=1e-3)], [[0, 1], [2, 3]]),
                                           clipped_adamw, lr=1e-2)
    else:
        cls, defaults, overrides = STEADY[name]
        opt = cls(groups(params, overrides[:2], [[0, 1], [2, 3]]), **defaults)
    train(opt, params, grads[:2])
    for g in grads[2:]:
        for p, gi in zip(params, g):
            p.grad = gi.clone()
        with Allocations(min_numel=48) as recorder:
            opt.step()
        assert recorder.fresh == []


def test_allocation_recorder_sees_a_fresh_tensor():
    # the check above can fail: torch's own (non-fused) Adam allocates per step
    shapes = [(64, 48), (48,)]
    params = leaves(make_params(shapes=shapes))
    opt = torch.optim.Adam(params, lr=1e-2)
    train(opt, params, make_grads(2, shapes=shapes, none_every=None))
    with Allocations(min_numel=48) as recorder:
        opt.step()
    assert recorder.fresh


class _CompileIds:
    """aot_eager, recording dynamo's compile ids (frame, compile number) it is handed."""

    def __init__(self):
        self.compile_ids = set()

    def __call__(self, gm, example_inputs):
        compile_id = CompileContext.current_compile_id()
        self.compile_ids.add((compile_id.frame_id, compile_id.frame_compile_id))
        return lookup_backend("aot_eager")(gm, example_inputs)


# the engines a user's compiled training step can meet: the functional update run eagerly,
# the eager step that dispatches to torch's fused kernel (set aside while traced: the
# functional update is traced instead), and our compiled flat-buffer step
USER_COMPILED_ENGINES = {"eager": (dict(fused=False), "eager"), "fused": ({}, "eager"),
                         "compiled": (dict(compile=True), "flat")}


@pytest.mark.parametrize("lr_kind", ["scheduler", "tensor"])
@pytest.mark.parametrize("engine", list(USER_COMPILED_ENGINES))
def test_user_compiled_training_step_follows_lr_changes(engine, lr_kind):
    # A user's torch.compile of the whole training step (forward, backward, step,
    # zero_grad); the lr changes every step, by LambdaLR (a float in the group) or in place
    # (a 0-d tensor). Every engine follows torch.optim.AdamW's trajectory over 30 steps,
    # and the lr changes compile nothing new after the first two steps.
    steps = 30
    flags, kind = USER_COMPILED_ENGINES[engine]

    def run(ours):
        model = _model()
        lr = torch.tensor(0.01, dtype=torch.float64) if lr_kind == "tensor" else 0.01
        if ours:
            opt = adapters.AdamW(model.parameters(), lr=lr, weight_decay=0.1, **flags)
            assert opt._groups[0].engine.kind == kind
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, foreach=False)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + s)) if lr_kind == "scheduler" else None
        xs, ys = _batches(steps)

        def train_step(x, y):
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            return loss

        backend = _CompileIds()
        step = torch.compile(train_step, backend=backend) if ours else train_step
        seen_after_two = None
        for i in range(steps):
            step(xs[i], ys[i])
            if sched is not None:
                sched.step()
            else:
                lr.fill_(0.01 / (2 + i))
            if i == 1:
                seen_after_two = set(backend.compile_ids)
        return [p.detach().clone() for p in model.parameters()], backend, seen_after_two

    torch._dynamo.reset()
    counters.clear()
    ours, backend, seen_after_two = run(True)
    reference, _, _ = run(False)
    assert max_rel_diff([ours], [reference]) <= 1e-12
    assert backend.compile_ids == seen_after_two  # no recompilation as the lr moves
    # graphs: the user's frames split at backward() (dynamo does not trace it) and, with a
    # scheduler, at the step wrapper torch's lr_scheduler installs (a file dynamo skips; the
    # same break happens with torch.optim). The optimizer adds none of its own.
    reasons = list(counters["graph_break"])
    assert any("backward" in r for r in reasons)
    assert all("backward" in r or "lr_scheduler.py" in r for r in reasons)
    assert any("lr_scheduler.py" in r for r in reasons) == (lr_kind == "scheduler")
    # compilations (frames, compilations in all), measured with torch 2.13: the compiled
    # engine's own graph is a frame compiled twice (the first step creates the state);
    # every other frame compiles at most twice, and nothing after the second step
    frames = {frame for frame, _ in backend.compile_ids}
    expected = {("compiled", "scheduler"): (3, 5), ("compiled", "tensor"): (2, 3)}.get(
        (engine, lr_kind), (2, 3) if lr_kind == "scheduler" else (2, 2))
    assert (len(frames), len(backend.compile_ids)) == expected
    assert all(n <= 1 for _, n in backend.compile_ids)


def _clipped_adamw(lr=1e-2, max_norm=0.5, weight_decay=0.1):
    return fo.chain(fo.clip_by_global_norm(max_norm), fo.adamw(lr=lr, weight_decay=weight_decay))


def test_reducing_chain_runs_on_flat_buffers_with_one_graph_whatever_the_param_count():
    # clip_by_global_norm declares a global reduction: the chain stays on the flat engine,
    # so 3 and 150 params compile to the same single graph, and the steps equal the eager
    # per-param ones (float64: up to the order of the norm's additions)
    def run(n, compile):
        gen = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(3 + i % 4, 2, generator=gen, dtype=torch.float64))
                  for i in range(n)]
        opt = adapters.FunctionalOptimizer(params, _clipped_adamw, compile=compile, lr=1e-2)
        for _ in range(5):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            opt.step()
        return [p.detach().clone() for p in params], opt

    assert fo.needs(_clipped_adamw()) == fo.Needs.GLOBAL
    for n in (3, 150):
        flat, opt = run(n, True)
        assert opt._groups[0].engine.kind == "flat"
        assert len(engine_graphs(opt)) == 1
        eager, _ = run(n, False)
        assert max_rel_diff([flat], [eager]) <= 1e-13
        state = opt.state_dict()["state"]
        assert len(state) == n and state[n - 1]["ClipByGlobalNormState.global_norm"].item() > 0.5


# ---------------------------------------------------------------------------------
# Compile cost and the shape of the compiled step (issue 10): structural facts only


def _clipped_adamw_cosine(lr=1e-2, max_norm=0.5, weight_decay=0.1):
    # the lr (a group hyperparameter, fed as a 0-d float64 tensor) is a cosine schedule's peak
    return fo.chain(fo.clip_by_global_norm(max_norm), fo.scale_by_adam(), fo.add_decayed_weights(weight_decay),
                    fo.scale_by_learning_rate(fo.schedules.warmup_cosine_decay_schedule(0.0, lr, 10, 100)))


def test_compiled_clip_chain_is_one_analysis_and_computes_per_step_scalars_once():
    # One graph, traced once (not through dynamo: ``adapters.traced``). And the per-step scalars stay out of the update loop: the clip factor (the norm's sqrt and a
    # division) and the schedule's cosine are computed once, before the elementwise loop
    # over the buffer, not for every vector of it (measured +40% step time when inlined).
    from torch._inductor.utils import run_and_get_code

    gen = torch.Generator().manual_seed(0)
    values = [torch.randn(64, 32, generator=gen), torch.randn(2048, generator=gen)]  # 4096: no padding
    grads = [torch.randn(v.shape, generator=gen) for v in values]
    runs = []
    for compile in (True, False):
        params = [torch.nn.Parameter(v.clone()) for v in values]
        opt = adapters.FunctionalOptimizer(params, _clipped_adamw_cosine, compile=compile)
        for p, g in zip(params, grads):
            p.grad = g.clone()
        runs.append((opt, params))
    (opt, params), (eager_opt, eager_params) = runs
    with torch._inductor.config.patch(force_disable_caches=True):
        _, codes = run_and_get_code(opt.step)
    assert opt._groups[0].engine.kind == "flat"
    assert len(engine_graphs(opt)) == 1
    kernels = [c for c in codes if 'extern "C"' in c]
    assert len(kernels) == 1
    code = kernels[0]
    update_loop = code[code.rindex("for(int64_t x0"):]  # the last loop: the elementwise update
    assert "4096L" in update_loop.split("\n", 1)[0]  # over the whole flat buffer
    assert code.count("std::cos") == 1 and "std::cos" not in update_loop
    assert "std::sqrt" in code and "std::sqrt" not in update_loop  # Adam's sqrt is vectorised there
    # and the steps are the eager ones (float32: the fused kernel rounds differently)
    for _ in range(2):
        opt.step()
    for _ in range(3):
        eager_opt.step()
    assert min(float((p.detach() - v).abs().max()) for p, v in zip(params, values)) > 0
    assert max_tensor_rel_diff(list(params), list(eager_params)) <= 1e-6


@pytest.mark.parametrize("compile", [False, True], ids=["eager-engine", "compiled-engine"])
@pytest.mark.parametrize("cls", [adapters.Adam, adapters.SGD], ids=lambda c: c.__name__)
def test_user_compiled_training_step_adds_no_graph_break_or_recompile(cls, compile):
    # As test_user_compiled_training_step_follows_lr_changes (AdamW), for Adam and SGD: a
    # user's torch.compile of forward, backward, step and zero_grad, a LambdaLR changing the
    # (float) lr every step. The only graph breaks are torch's (Tensor.backward, the step
    # wrapper LR schedulers install); no frame compiles more than twice (the second time
    # when the lr float first changes: dynamo then makes it an input), none after step 2.
    steps = 12
    torch._dynamo.reset()
    counters.clear()
    model = _model()
    kwargs = dict(momentum=0.9) if cls is adapters.SGD else dict(weight_decay=0.1)
    opt = cls(model.parameters(), lr=0.01, compile=compile, **kwargs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + s))
    xs, ys = _batches(steps)

    def train_step(x, y):
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    backend = _CompileIds()
    step = torch.compile(train_step, backend=backend)
    seen_after_two = None
    for i in range(steps):
        step(xs[i], ys[i])
        sched.step()
        if i == 1:
            seen_after_two = set(backend.compile_ids)
    assert backend.compile_ids == seen_after_two
    assert all(n <= 1 for _, n in backend.compile_ids)
    reasons = list(counters["graph_break"])
    assert any("backward" in r for r in reasons)
    assert all("backward" in r or "lr_scheduler.py" in r for r in reasons)
    assert len({frame for frame, _ in backend.compile_ids}) <= 3


def test_tree_walks_trace_in_one_graph_and_match_optree():
    # While compiling, fo.tree.leaves and Selection collect leaves with optree.tree_map
    # (dynamo maps it natively; its tree_leaves/tree_flatten are polyfills traced node by
    # node, ~100x slower to trace). Same leaves, order and structures as optree, eagerly
    # and traced, with NamedTuples, Nones and dicts (whose keys optree sorts: those trees
    # still go through optree's flattening).
    from collections import namedtuple

    Pair = namedtuple("Pair", "a b")
    t = [torch.full((2,), float(i)) for i in range(6)]
    adam_state = fo.ScaleByAdamState(count=[t[0], None], mu=[t[1], t[2]], nu=[t[3], t[4]], nu_max=None)
    cases = [
        ((adam_state, Pair(None, t[5]), fo.EmptyState()), (Pair(t[1], None), [t[2]]), (Pair(t[3], t[4]), [t[5]])),
        ((adam_state, {"z": t[5], "a": Pair(None, t[0])}), {"w": t[1], "b": None}, {"w": t[2], "b": t[3]}),
    ]

    def walk(state, updates, mu):
        sel = fo.tree.select(updates, mu=mu)
        return (fo.tree.leaves(state), sel.rebuild([u + m for u, m in zip(sel.updates, sel["mu"])]),
                sel.rebuild([m * 2 for m in sel["mu"]], "mu"))

    def as_lists(tree):
        return [None if x is None else x.tolist() for x in optree.tree_leaves(tree, none_is_leaf=True)]

    for state, updates, mu in cases:
        torch._dynamo.reset()
        counters.clear()
        graphs = []
        traced = torch.compile(walk, backend=lambda gm, _: graphs.append(gm) or gm.forward,
                               fullgraph=True)(state, updates, mu)
        eager = walk(state, updates, mu)
        want_sum = optree.tree_map(lambda u, m: None if u is None else u + m, updates, mu, none_is_leaf=True)
        want_mu = optree.tree_map(lambda u, m: m if u is None else m * 2, updates, mu, none_is_leaf=True)
        for got in (eager, traced):
            assert [x.tolist() for x in got[0]] == [x.tolist() for x in optree.tree_leaves(state)]
            for result, want in ((got[1], want_sum), (got[2], want_mu)):
                assert optree.tree_structure(result, none_is_leaf=True) == optree.tree_structure(want, none_is_leaf=True)
                assert as_lists(result) == as_lists(want)
        assert len(graphs) == 1 and not counters["graph_break"]
