"""``adapters.traced``: the flat engine's step traced once with make_fx and compiled by
inductor, without dynamo.

* captured tensors (the adapter's hyperparameter tensors) are graph inputs: an in-place
  change is read at the next call, with no new graph;
* a call with another argument structure (a tensor of another shape, an extra argument)
  compiles a second graph, and calls switch between them; dynamo sees none of it;
* arguments it cannot key (an unhashable constant), or a structure past ``MAX_GRAPHS``, go
  to ``torch.compile`` instead;
* the adapter's flat step equals the eager step while a schedule moves the lr.
"""

from __future__ import annotations

import torch
from torch._dynamo.utils import counters

import adapters
import adapters.traced
import functional_optim as fo
from adapter_harness import max_rel_diff
from adapters.traced import TracedStep
from compile_counting import engine_graphs


def _decay(xs, scale, extra=None):
    for x in xs:
        x.mul_(scale)
        if extra is not None:
            x.add_(extra)


def test_captured_tensors_are_inputs_read_at_every_call():
    lr = torch.tensor(0.5, dtype=torch.float64)

    def step(xs):
        for x in xs:
            x.sub_(lr * x)

    xs = [torch.ones(5), torch.full((2, 3), 2.0)]
    traced = TracedStep(step)
    want = [x.clone() for x in xs]
    for value in (0.5, 0.25, 0.125):
        lr.fill_(value)
        traced(xs)
        want = [w - value * w for w in want]
        assert all(torch.equal(x, w) for x, w in zip(xs, want))
    assert len(traced.graphs) == 1 and traced.fallback is None


def test_a_new_argument_structure_compiles_a_second_graph_without_dynamo():
    counters.clear()
    traced = TracedStep(_decay)
    a, b = [torch.ones(4)], [torch.ones(3, 2)]
    scale = torch.tensor(0.5)
    traced(a, scale)
    traced(b, scale)
    traced(a, scale, torch.tensor(1.0))
    traced(a, scale)
    assert len(traced.graphs) == 3  # (4,), (3, 2), and (4,) with ``extra``
    assert torch.equal(a[0], torch.full((4,), 0.5 * (0.5 * 0.5 + 1.0)))
    assert torch.equal(b[0], torch.full((3, 2), 0.5))
    assert not counters["stats"]  # dynamo traced nothing


class _Unhashable:
    __hash__ = None

    def __eq__(self, other):
        return self is other


def test_an_unhashable_constant_goes_to_torch_compile():
    def step(xs, tag):
        del tag
        for x in xs:
            x.add_(1)

    traced = TracedStep(step)
    xs = [torch.zeros(3)]
    traced(xs, _Unhashable())
    traced(xs, _Unhashable())
    assert traced.fallback is not None and not traced.graphs
    assert torch.equal(xs[0], torch.full((3,), 2.0))


def test_flat_step_follows_the_eager_step_under_a_schedule_with_one_graph():
    def run(compile):
        gen = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64))
                  for s in [(8, 4), (4,), (3, 5)]]
        opt = adapters.FunctionalOptimizer(params, fo.adamw, compile=compile, lr=1e-2, weight_decay=0.1)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
        for _ in range(10):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            opt.step()
            sched.step()
        return [p.detach().clone() for p in params], opt

    (flat, opt), (eager, _) = run(True), run(False)
    assert opt._groups[0].engine.kind == "flat" and len(engine_graphs(opt)) == 1
    assert max_rel_diff([flat], [eager]) <= 1e-13  # float64: the compiled kernel's rounding


def test_past_max_graphs_every_call_goes_to_torch_compile(monkeypatch):
    monkeypatch.setattr(adapters.traced, "MAX_GRAPHS", 1)
    traced = TracedStep(_decay)
    a, b = [torch.ones(4)], [torch.ones(3)]
    traced(a, torch.tensor(0.5))
    traced(b, torch.tensor(0.5))  # a second structure: past the limit
    traced(a, torch.tensor(0.5))
    assert len(traced.graphs) == 1 and traced.fallback is not None
    assert torch.equal(a[0], torch.full((4,), 0.25)) and torch.equal(b[0], torch.full((3,), 0.5))
