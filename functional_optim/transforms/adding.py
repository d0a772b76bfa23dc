"""Transforms that add a term to the updates."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from .. import kernels as k
from .. import steps
from ..base import EmptyState, GradientTransformation, Needs, ScalarOrSchedule, declare, mark_elementwise
from ..hyperparams import check_range, is_schedule, value_at
from ..tree import select


class AddDecayedWeightsState(NamedTuple):
    """State of :func:`add_decayed_weights` with a scheduled weight decay."""

    count: torch.Tensor  # 0-d int32: updates applied so far (the schedule's argument)


def _mask_flags(mask: Any, params: Any, updates: Any) -> list[bool]:
    tree = mask(params) if callable(mask) else mask
    flags = select(updates, mask=tree)["mask"]
    for flag in flags:
        if not isinstance(flag, bool):
            raise TypeError(f"mask leaves must be Python bools, got {type(flag).__name__}")
    return flags


def _decay(us: list, ps: list, wd: Any, donate: bool) -> list:
    # u + wd * p, skipped where wd is 0 as torch.optim skips it (``weight_decay != 0``, a 0-d
    # tensor included): 0 * inf would turn an infinite param's update into NaN
    if not isinstance(wd, torch.Tensor):
        return k.add(us, ps, wd, donate=donate)
    if k.writes_in_place(donate) and not torch.compiler.is_compiling():
        if wd.device.type == "cpu" and not wd.requires_grad and wd.item() == 0:
            return list(us)  # an eager in-place step reads a CPU scalar with no device sync
        return k.add(us, ps, wd, donate=True)  # (accelerators: no zero test, no host sync)
    return k.where(wd != 0, k.add(us, ps, wd), us)


def add_decayed_weights(weight_decay: ScalarOrSchedule = 0.0,
                        mask: Any | Callable[[Any], Any] | None = None) -> GradientTransformation:
    """Add ``weight_decay * param`` to each update (L2 regularisation as a gradient term).

    Placed before an adaptive transform it is torch.optim's coupled ``weight_decay``;
    placed after it and before the learning rate it is AdamW's decoupled decay.
    A tensor weight decay holding 0 adds nothing (torch.optim skips the term at 0, so an
    infinite param keeps a finite update rather than ``0 * inf``).

    Args:
      weight_decay: a non-negative number, 0-d tensor or schedule ``count -> value``.
      mask: a tree of Python bools shaped like the params (True: decay this leaf), or a
        function ``params -> tree of bools``; masked-out leaves pass through unchanged.
        None (default) decays every leaf.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.add_decayed_weights(0.1)
      >>> params = {"w": torch.ones(2)}
      >>> tx.update({"w": torch.zeros(2)}, tx.init(params), params)[0]["w"]
      tensor([0.1000, 0.1000])
    """
    check_range("weight_decay", weight_decay, 0.0, schedule_ok=True)
    scheduled = is_schedule(weight_decay)

    def init_fn(params):
        if scheduled:
            return AddDecayedWeightsState(count=steps.zero_count(steps.first_device(params)))
        return EmptyState()

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del extra
        if params is None:
            raise ValueError("add_decayed_weights needs params: call update(updates, state, params)")
        sel = select(updates, params=params)
        if mask is not None:
            flags = _mask_flags(mask, params, updates)
            chosen = [i for i, flag in enumerate(flags) if flag]
        else:
            chosen = range(len(sel))
        wd = value_at(weight_decay, state.count)
        us, ps = sel.updates, sel["params"]
        decayed = _decay([us[i] for i in chosen], [ps[i] for i in chosen], wd, donate)
        new = list(us)
        for i, u in zip(chosen, decayed):
            new[i] = u
        new_state = AddDecayedWeightsState(count=state.count + 1) if scheduled else state
        return sel.rebuild(new), new_state

    tx = GradientTransformation(init_fn, update_fn)
    return declare(tx, Needs.LEAVES) if mask is not None else mark_elementwise(tx)  # mask by leaf
