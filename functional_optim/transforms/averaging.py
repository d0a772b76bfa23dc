"""Iterate averaging: averaged SGD (torch.optim.ASGD), with the average kept in state."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation, ScalarOrSchedule, mark_elementwise
from ..hyperparams import check_number, check_range, is_schedule, value_at
from ..tree import map as tree_map
from ..tree import select, zeros_like


class ScaleByAsgdState(NamedTuple):
    """State of :func:`scale_by_asgd`.

    ``eta`` and ``mu`` are 0-d tensors in torch's scalar dtype (float32 unless the default
    dtype is float64 when the state is initialised), rounded to it every step as torch does.
    """

    count: Any  # tree of 0-d int32: updates each leaf has received (torch's per-param `step`)
    eta: Any  # tree of 0-d: the step size of the leaf's next update (`eta`; its first update
    #           uses the learning rate of that moment instead, as torch initialises it lazily)
    mu: Any  # tree of 0-d: the averaging weight of the leaf's next update (`mu`), 1 at first
    ax: Any  # tree like params: the averaged params (`ax`), zeros until a leaf's first update
    schedule_count: Any  # 0-d int32: updates so far, the learning-rate schedule's argument
    #                      (None unless the learning rate is a schedule)


def scale_by_asgd(learning_rate: ScalarOrSchedule = 1e-2, lambd: float | torch.Tensor = 1e-4,
                  alpha: float | torch.Tensor = 0.75, t0: float | torch.Tensor = 1e6) -> GradientTransformation:
    """Averaged SGD with ``torch.optim.ASGD``'s numerics; returns the update to add to the params.

    Per leaf, with ``t`` its own update count (after this update)::

        p_new = p * (1 - lambd * eta) - eta * g          (eta: from the previous update; lr at first)
        ax    = p_new if mu == 1 else ax + mu * (p_new - ax)     (mu: from the previous update)
        eta   = lr / (1 + lambd * lr * t) ** alpha;   mu = 1 / max(1, t - t0)

    The output is ``p_new - p``, so this transform must come last in a chain (after any
    weight decay) and its output must be applied unchanged: ``ax`` averages the params
    that result. Read the average with ``fo.tree.get(state, "ax")`` (torch's ``state['ax']``;
    it is never written to the params). ``eta`` and ``mu`` are rounded to torch's scalar
    dtype every step, like torch's 0-d state tensors.

    The learning rate enters through ``eta``: a leaf's first update uses the learning
    rate of that moment, later updates the ``eta`` computed (from the then-current
    learning rate) at the end of the previous update. A 0-d tensor learning rate may be
    changed in place between updates, and is differentiable (through ``eta``); a schedule
    is called with the number of updates so far (``schedule_count``), as an LR scheduler
    stepping once per update would set it.

    Args:
      learning_rate: >= 0; a number, a 0-d tensor or a schedule ``count -> lr``. Default 1e-2.
      lambd: decay term. Default 1e-4.
      alpha: power of the ``eta`` update. Default 0.75.
      t0: the update count after which averaging starts (``mu < 1``). Default 1e6.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_asgd(0.1, lambd=0.0)
      >>> params = torch.ones(2)
      >>> u, state = tx.update(torch.ones(2), tx.init(params), params)
      >>> u, state.ax
      (tensor([-0.1000, -0.1000]), tensor([0.9000, 0.9000]))
    """
    check_range("learning_rate", learning_rate, 0.0, schedule_ok=True)
    for name, value in (("lambd", lambd), ("alpha", alpha), ("t0", t0)):
        check_number(name, value)
    scheduled = is_schedule(learning_rate)

    def init_fn(params):
        dtype = steps.torch_scalar_dtype()
        device = steps.first_device(params)
        lr = value_at(learning_rate, steps.zero_count(device))
        return ScaleByAsgdState(
            count=steps.leaf_counts(params),
            eta=tree_map(lambda p: torch.as_tensor(lr, dtype=dtype, device=p.device).detach(), params),
            mu=tree_map(lambda p: torch.ones((), dtype=dtype, device=p.device), params),
            ax=zeros_like(params),
            schedule_count=steps.zero_count(device) if scheduled else None)

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del extra
        if params is None:
            raise ValueError("scale_by_asgd needs params: call update(updates, state, params)")
        sel = select(updates, count=state.count, eta=state.eta, mu=state.mu, ax=state.ax, params=params)
        sel.check_like_updates("ax", "params")
        g, ps, etas = sel.updates, sel["params"], sel["eta"]
        lr = value_at(learning_rate, state.schedule_count) if scheduled else learning_rate
        counts = steps.increment(sel["count"], donate=donate)
        state_dtype = etas[0].dtype if etas else torch.float32

        def rounded(x, t):  # to torch's 0-d state dtype and back (exact in float64)
            return torch.as_tensor(x, dtype=t.dtype, device=t.device).to(state_dtype).to(t.dtype)

        def scalars(t, eta, mu):
            eta = torch.where(t == 1, rounded(lr, t), eta)  # torch sets eta = lr at a leaf's first step
            new_eta = rounded(lr / (1 + lambd * lr * t) ** alpha, t)
            new_mu = rounded(1 / torch.clamp_min(t - t0, 1), t)
            return 1 - lambd * eta, -eta, mu, new_eta, new_mu

        decay, neg_eta, mu, new_eta, new_mu = steps.per_leaf_with(scalars, counts, g, etas, sel["mu"])
        decay, neg_eta, mu = (k.scalars_for(s, g) for s in (decay, neg_eta, mu))

        step = k.mul(g, neg_eta, donate=donate)  # -eta * g (in g's memory when donated)
        # out = -eta * g + (p * (1 - lambd * eta) - p), there too: the new param is p + out. An
        # infinite p keeps its value (torch's p.mul_ leaves inf), where p_new - p is inf - inf
        out = k.add_shrink(step, ps, decay, donate=donate)
        # ax = lerp(ax, p + out, mu) as lerp(ax, p, mu) + mu * out, with no param-sized
        # temporary; lerp with weight 1 is exactly p: torch's `ax = p.clone()` while mu == 1
        ax = k.lerp(sel["ax"], ps, mu, donate=donate)
        ax = k.add(ax, out, mu, donate=True)

        new_state = ScaleByAsgdState(
            count=sel.rebuild(counts, "count"),
            eta=sel.rebuild([e.to(state_dtype) for e in new_eta], "eta"),
            mu=sel.rebuild([m.to(state_dtype) for m in new_mu], "mu"),
            ax=sel.rebuild(ax, "ax"),
            schedule_count=state.schedule_count + 1 if scheduled else None)
        return sel.rebuild(out), new_state

    return mark_elementwise(GradientTransformation(init_fn, update_fn))
