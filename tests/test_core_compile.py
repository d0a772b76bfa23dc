"""torch.compile(update, fullgraph=True): no graph break, one compilation, equals eager."""

from __future__ import annotations

import pytest
import torch

import functional_optim as fo
from compile_counting import CountingBackend


def _schedule(count):
    return 1e-2 * 0.95 ** count


CHAINS = {
    "adam": lambda lr: fo.adam(lr=lr),
    "clip_adam_decay_schedule": lambda lr: fo.chain(
        fo.clip_by_global_norm(1.0), fo.scale_by_adam(), fo.add_decayed_weights(1e-2),
        fo.scale_by_learning_rate(_schedule)),
}


@pytest.mark.parametrize("name", list(CHAINS))
@pytest.mark.parametrize("backend", ["counting", "inductor"])
def test_compiled_update_one_graph_and_equal_to_eager(name, backend):
    torch._dynamo.reset()
    lr = torch.tensor(1e-2)
    opt = CHAINS[name](lr)
    gen = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(4, 3, generator=gen), "b": torch.randn(3, generator=gen)}
    counter = CountingBackend()
    compiled = torch.compile(opt.update, fullgraph=True, backend=counter if backend == "counting" else "inductor")
    state_c = state_e = opt.init(params)
    params_c = params_e = params
    for step in range(20):
        lr.fill_(1e-2 * (1 - step / 40))  # the lr changes every step, in place
        grads = {"w": torch.randn(4, 3, generator=gen), "b": torch.randn(3, generator=gen)}
        u_c, state_c = compiled(grads, state_c, params_c)
        u_e, state_e = opt.update(grads, state_e, params_e)
        params_c, params_e = fo.apply_updates(params_c, u_c), fo.apply_updates(params_e, u_e)
    for key in params:
        torch.testing.assert_close(params_c[key], params_e[key], rtol=1e-6, atol=1e-7)
    if backend == "counting":
        assert counter.graphs == 1  # one compilation across 20 changing lrs and steps
    assert fo.tree.get(state_c, "global_norm", default=torch.tensor(0.0)).isfinite()
