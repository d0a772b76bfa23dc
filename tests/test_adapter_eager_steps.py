"""adapters.eager_steps: RMSprop/Adadelta/Adamax/NAdam/RAdam/ASGD (and Adam/AdamW with a tensor
lr) drop-in eager steps as torch's for-loop, in place on the functional state. (Muon's and
SparseAdam's, whose params this harness does not fit, are held to torch's loop by
test_torch_optim_db.py and test_adafactor_muon.py.)

* over 30 steps (float32 and float64; shapes incl. a 0-d param, a transposed param and a
  param whose gradient is None every third step) the dispatched step is torch's for-loop
  (``foreach=False``) bit for bit, params and state_dict alike, and agrees with the
  functional update (``FunctionalOptimizer(params, fo.<alias>)``) to 1e-14 relative in
  float64 and 4e-6 in float32. Measured over these cases: functional vs dispatched up to
  1.6e-15 / 1.9e-6 (RMSprop with momentum, float32); torch's own foreach vs for-loop 0
  for RMSprop, Adadelta and Adamax (CPU foreach runs the same per-tensor kernels), up to
  1.0e-16 / 1.1e-7 for NAdam and 5.8e-9 / 1.3e-6 for ASGD;
* large params run piece by piece (RMSprop, Adadelta, Adamax, NAdam, RAdam, ASGD) with torch's bits;
* the user's gradients are never written, and every counter advances once per step;
* complex params, sparse gradients and tensor hyperparameters other than lr take the
  functional update;
* checkpoints pass both ways with torch mid-run and the trajectory stays torch's bit for bit;
* a steady-state step allocates nothing param-sized.
"""

from __future__ import annotations

import pytest
import torch

import adapters
import functional_optim as fo
from adapter_harness import Allocations, SHAPES, leaves, make_grads, make_params, max_rel_diff, train
from adapters import eager_steps

STEPS = 30
CASES = {
    "adam_tensor_lr": (adapters.Adam, torch.optim.Adam, fo.adam, dict(lr=torch.tensor(1e-2), weight_decay=0.1)),
    "adamw_tensor_lr_all": (adapters.AdamW, torch.optim.AdamW, fo.adamw, dict(
        lr=torch.tensor(1e-2), betas=(0.8, 0.99), weight_decay=0.1, amsgrad=True, maximize=True)),
    "rmsprop": (adapters.RMSprop, torch.optim.RMSprop, fo.rmsprop, dict(lr=1e-2)),
    "rmsprop_momentum": (adapters.RMSprop, torch.optim.RMSprop, fo.rmsprop, dict(lr=1e-2, momentum=0.9)),
    "rmsprop_centered_all": (adapters.RMSprop, torch.optim.RMSprop, fo.rmsprop, dict(
        lr=1e-2, alpha=0.9, momentum=0.5, centered=True, weight_decay=0.1, maximize=True)),
    "rmsprop_tensor_lr": (adapters.RMSprop, torch.optim.RMSprop, fo.rmsprop, dict(lr=torch.tensor(1e-2),
                                                                                  centered=True)),
    "adadelta": (adapters.Adadelta, torch.optim.Adadelta, fo.adadelta, dict(lr=0.5)),
    "adadelta_all": (adapters.Adadelta, torch.optim.Adadelta, fo.adadelta, dict(
        lr=0.5, rho=0.8, eps=1e-4, weight_decay=0.1, maximize=True)),
    "adamax": (adapters.Adamax, torch.optim.Adamax, fo.adamax, dict(lr=1e-2)),
    "adamax_all": (adapters.Adamax, torch.optim.Adamax, fo.adamax, dict(
        lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1, maximize=True)),
    "adamax_tensor_lr": (adapters.Adamax, torch.optim.Adamax, fo.adamax, dict(lr=torch.tensor(1e-2))),
    "nadam": (adapters.NAdam, torch.optim.NAdam, fo.nadam, dict(lr=1e-2, weight_decay=0.1)),
    "nadam_decoupled_all": (adapters.NAdam, torch.optim.NAdam, fo.nadam, dict(
        lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True, momentum_decay=0.01, maximize=True)),
    "nadam_tensor_lr": (adapters.NAdam, torch.optim.NAdam, fo.nadam, dict(
        lr=torch.tensor([1e-2]), weight_decay=0.1, decoupled_weight_decay=True)),
    "radam": (adapters.RAdam, torch.optim.RAdam, fo.radam, dict(lr=1e-2, weight_decay=0.1)),
    "radam_decoupled_all": (adapters.RAdam, torch.optim.RAdam, fo.radam, dict(
        lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    "radam_tensor_lr": (adapters.RAdam, torch.optim.RAdam, fo.radam, dict(lr=torch.tensor(1e-2))),
    "asgd": (adapters.ASGD, torch.optim.ASGD, fo.asgd, dict(lr=1e-2, t0=5)),  # averaging from step 6
    "asgd_all": (adapters.ASGD, torch.optim.ASGD, fo.asgd, dict(
        lr=1e-2, lambd=1e-2, alpha=0.5, t0=5, weight_decay=0.1, maximize=True)),
    "asgd_tensor_lr": (adapters.ASGD, torch.optim.ASGD, fo.asgd, dict(lr=torch.tensor(1e-2), t0=5)),
}
TRANSPOSED = (4, 3)  # the last param: a (4, 3) tensor seen through .t(), not contiguous
GRAD_SHAPES = [*SHAPES, TRANSPOSED[::-1]]


def _params(dtype):
    params = leaves(make_params(dtype, shapes=[*SHAPES, TRANSPOSED]))
    params[-1] = torch.nn.Parameter(params[-1].detach().clone().t())
    assert not params[-1].is_contiguous()
    return params


def _spy(monkeypatch) -> list:
    calls = []
    original = eager_steps.step
    monkeypatch.setattr(eager_steps, "step", lambda *a, **k: (calls.append(a[0]), original(*a, **k))[1])
    return calls


def _states_equal(ours: dict, ref: dict) -> None:
    assert ours.keys() == ref.keys()
    for i in ref:
        assert ours[i].keys() == ref[i].keys(), i
        for key, value in ref[i].items():
            assert torch.equal(ours[i][key], value), (i, key)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", list(CASES))
def test_dispatched_step_is_torchs_for_loop_bit_for_bit(name, dtype, monkeypatch):
    ours_cls, torch_cls, alias, kwargs = CASES[name]
    if isinstance(kwargs["lr"], torch.Tensor):
        # a float32 lr makes torch's loop (and ours) compute the step's scalars in float32,
        # which the functional update, in the params' precision, does not
        kwargs = {**kwargs, "lr": kwargs["lr"].to(dtype)}
    grads = make_grads(STEPS, dtype, shapes=GRAD_SHAPES)
    calls = _spy(monkeypatch)
    params = _params(dtype)
    opt = ours_cls(params, **kwargs)
    dispatched = train(opt, params, grads)
    assert len(calls) == STEPS  # every step ran in place
    ref_params = _params(dtype)
    ref_opt = torch_cls(ref_params, **kwargs, foreach=False)
    assert max_rel_diff(dispatched, train(ref_opt, ref_params, grads)) == 0.0
    _states_equal(opt.state_dict()["state"], ref_opt.state_dict()["state"])
    fn_params = _params(dtype)
    functional = train(adapters.FunctionalOptimizer(fn_params, alias, **kwargs), fn_params, grads)
    assert len(calls) == STEPS  # the plain FunctionalOptimizer never dispatches
    assert max_rel_diff(functional, dispatched) <= (1e-14 if dtype == torch.float64 else 4e-6)


@pytest.mark.parametrize("name", ["rmsprop", "rmsprop_centered_all", "adadelta_all", "adamax_all",
                                  "nadam_decoupled_all", "radam_decoupled_all", "asgd_all"])
def test_large_params_run_in_pieces_with_torchs_bits(name, monkeypatch):
    # pieces of 64 elements (real runs: 2**20) over params of 203 and 15 x 17 elements,
    # float32 and float64: the same bits as torch's loop over whole tensors
    monkeypatch.setattr(eager_steps, "CHUNK", 64)
    pieces = []
    original = eager_steps._pieces
    monkeypatch.setattr(eager_steps, "_pieces", lambda *a: pieces.append(1) or original(*a))
    ours_cls, torch_cls, _, kwargs = CASES[name]
    shapes = [(203,), (15, 17), (3,)]
    for dtype in (torch.float32, torch.float64):
        grads = make_grads(10, dtype, shapes=shapes, none_every=None)
        results = []
        for make in (lambda ps: ours_cls(ps, **kwargs), lambda ps: torch_cls(ps, **kwargs, foreach=False)):
            params = leaves(make_params(dtype, shapes=shapes))
            results.append(train(make(params), params, grads))
        assert max_rel_diff(*results) == 0.0
    assert len(pieces) == 2 * 10 * 2  # two params in pieces, every step, both dtypes


@pytest.mark.parametrize("name", ["rmsprop_centered_all", "adadelta_all", "adamax_all",
                                  "nadam_decoupled_all", "radam_decoupled_all", "asgd_all"])
def test_gradients_are_left_untouched_and_counters_advance(name):
    ours_cls, _, _, kwargs = CASES[name]
    params = _params(torch.float32)
    opt = ours_cls(params, **kwargs)
    grads = make_grads(1, torch.float32, shapes=GRAD_SHAPES, none_every=None)[0]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    for _ in range(3):
        opt.step()
    assert all(torch.equal(p.grad, g) for p, g in zip(params, grads))
    entries = opt._groups[0].entries(params)
    for entry in entries:
        counters = [v for n, v in entry.items() if n.endswith(".count")]
        assert counters and all(c.dtype == torch.int32 and int(c) == 3 for c in counters)


def _dispatches(monkeypatch, params, opt, grads=None) -> int:
    calls = _spy(monkeypatch)
    for p, g in zip(params, grads or [torch.ones_like(p) for p in params]):
        p.grad = g
    opt.step()
    return len(calls)


def test_falls_back_where_the_in_place_step_does_not_apply(monkeypatch):
    def count(cls, dtype=torch.float32, **kwargs):
        params = leaves(make_params(dtype))
        return _dispatches(monkeypatch, params, cls(params, **kwargs))

    assert count(adapters.RMSprop, lr=0.1) == 1
    assert count(adapters.RMSprop, torch.bfloat16, lr=0.1) == 1
    assert count(adapters.NAdam, lr=torch.tensor(0.1)) == 1  # a tensor lr is torch's loop too
    assert count(adapters.RMSprop, lr=0.1, alpha=torch.tensor(0.9)) == 0  # tensor hyperparameters
    assert count(adapters.Adadelta, lr=0.1, rho=torch.tensor(0.8)) == 0
    assert count(adapters.Adamax, lr=0.1, betas=(torch.tensor(0.9), 0.99)) == 0
    assert count(adapters.NAdam, lr=0.1, momentum_decay=torch.tensor(4e-3)) == 0
    assert count(adapters.RAdam, lr=0.1, eps=torch.tensor(1e-8)) == 0
    assert count(adapters.ASGD, lr=0.1, weight_decay=torch.tensor(0.1)) == 0

    # complex params: the functional update, which still follows torch's loop
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(3, 2, dtype=torch.complex128, generator=gen)
    grads = [torch.randn(3, 2, dtype=torch.complex128, generator=gen) for _ in range(5)]
    results = []
    for make in (lambda ps: adapters.RMSprop(ps, lr=0.1, centered=True, momentum=0.9),
                 lambda ps: torch.optim.RMSprop(ps, lr=0.1, centered=True, momentum=0.9, foreach=False)):
        p = torch.nn.Parameter(start.clone())
        results.append(train(make([p]), [p], [[g] for g in grads]))
    assert max_rel_diff(*results) <= 1e-14
    assert _dispatches(monkeypatch, [p := torch.nn.Parameter(start.clone())],
                       adapters.RMSprop([p], lr=0.1)) == 0


def test_sparse_gradients_are_not_dispatched():
    emb = torch.nn.Embedding(5, 3, sparse=True)
    opt = adapters.RMSprop(emb.parameters(), lr=0.1)
    emb(torch.tensor([1, 3])).sum().backward()
    assert not eager_steps.applies("rmsprop", opt.param_groups[0], [emb.weight], [emb.weight.grad])
    dense = torch.nn.Parameter(torch.ones(3))
    assert eager_steps.applies("rmsprop", opt.param_groups[0], [emb.weight, dense], [None, torch.ones(3)])


@pytest.mark.parametrize("name", ["rmsprop_centered_all", "nadam_decoupled_all", "radam_decoupled_all",
                                  "asgd_all"])
def test_checkpoints_pass_both_ways_with_torch_mid_run(name):
    # torch -> ours -> torch over 3 x 10 steps is torch's trajectory bit for bit, so every
    # state leaf the in-place step leaves (scalars included) is torch's. torch's reference
    # reloads its own state at step 20 too: loading casts float state to the params' dtype
    # (NAdam's float32 mu_product becomes float64), which changes the last bits after it
    ours_cls, torch_cls, _, kwargs = CASES[name]
    grads = make_grads(STEPS, torch.float64, shapes=GRAD_SHAPES)
    ref_params = _params(torch.float64)
    ref_opt = torch_cls(ref_params, **kwargs, foreach=False)
    reference = train(ref_opt, ref_params, grads[:20])
    reloaded = torch_cls(ref_params, **kwargs, foreach=False)
    reloaded.load_state_dict(ref_opt.state_dict())
    reference += train(reloaded, ref_params, grads[20:])
    params = _params(torch.float64)
    first = torch_cls(params, **kwargs, foreach=False)
    mixed = train(first, params, grads[:10])
    ours = ours_cls(params, **kwargs)
    ours.load_state_dict(first.state_dict())
    mixed += train(ours, params, grads[10:20])
    last = torch_cls(params, **kwargs, foreach=False)
    last.load_state_dict(ours.state_dict())
    mixed += train(last, params, grads[20:])
    assert max_rel_diff(mixed, reference) == 0.0


@pytest.mark.parametrize("name", ["rmsprop_centered_all", "adadelta_all", "adamax_all",
                                  "nadam_decoupled_all", "radam_decoupled_all", "asgd_all", "asgd_tensor_lr"])
def test_eager_step_allocates_nothing_param_sized(name):
    ours_cls, _, _, kwargs = CASES[name]
    shapes = [(64, 48), (48,), (4, 8, 5, 5), ()]
    grads = make_grads(12, torch.float32, shapes=shapes, none_every=None)
    params = leaves(make_params(torch.float32, shapes=shapes))
    opt = ours_cls(params, **kwargs)
    train(opt, params, grads[:8])  # scratch is made on first use (RAdam rectifies from step 6, ASGD averages from 7)
    assert all(w is None for w in opt._groups[0].engine.work)  # the functional path's buffers: never made
    for g in grads[8:]:
        for p, gi in zip(params, g):
            p.grad = gi.clone()
        with Allocations(min_numel=48) as recorder:
            opt.step()
        assert recorder.fresh == []


def test_allocation_recorder_sees_torchs_temporaries():
    # the check above can fail: torch's own loop allocates sqrt(v) per param and step
    shapes = [(64, 48), (48,)]
    params = leaves(make_params(torch.float32, shapes=shapes))
    opt = torch.optim.RMSprop(params, lr=1e-2, foreach=False)
    train(opt, params, make_grads(2, torch.float32, shapes=shapes, none_every=None))
    with Allocations(min_numel=48) as recorder:
        opt.step()
    assert recorder.fresh
