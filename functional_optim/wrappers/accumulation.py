"""Gradient accumulation: ``MultiSteps`` applies an optimizer once every k mini-steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Union

import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation, Needs, declare, needs, needs_of_all
from ..tree import leaves, select
from ..tree import map as tree_map
from ..tree import where as tree_where
from .finite import zeros_where_not

__all__ = ["MultiSteps", "MultiStepsState", "skip_not_finite", "skip_large_updates"]

ShouldSkipUpdateFn = Callable[..., tuple[torch.Tensor, Any]]


class MultiStepsState(NamedTuple):
    """State of :class:`MultiSteps`."""

    mini_step: torch.Tensor  # 0-d int32: mini-steps accumulated in the current cycle (0 after an inner update)
    gradient_step: torch.Tensor  # 0-d int32: inner updates applied so far
    inner_opt_state: Any  # state of the inner optimizer (changes only when it is applied)
    acc_grads: Any  # tree like params (accumulator_dtype or the param's dtype): the sum of the
    #                 gradients not yet applied (zero after an inner update)
    skip_state: Any = ()  # what should_skip_update_fn returned last (() without one)


class MultiSteps:
    """Accumulate gradients over k mini-steps and apply ``opt`` to their mean (or sum).

    Every call adds the incoming gradients to ``acc_grads``. At the k-th mini-step
    (``k = every_k_schedule(gradient_step)``) the inner optimizer is applied to
    ``acc_grads / k`` (``use_grad_mean=True``, what dividing the loss by k gives) or to
    the sum, and its updates are returned; on the other mini-steps the returned updates
    are zeros, and the inner state does not change (optax's ``MultiSteps``). Applying the
    zeros is a no-op; :meth:`has_updated` tells whether the last call applied the
    optimizer, so a caller can skip it (and ``zero_grad``) on other steps.

    No host sync: the inner update runs at every call and ``torch.where`` commits its
    state and updates only at the final mini-step, so a step compiles to one graph and
    nothing recompiles from one mini-step to the next. The inner update is never
    donated (it would overwrite the inner state that a non-final mini-step keeps); with
    ``donate=True`` the sum is accumulated in place and the incoming gradients' buffers
    receive the output.

    ``None`` gradients: a leaf whose gradient is None contributes nothing at that
    mini-step (a zero in the mean). A leaf whose gradient is None at the final mini-step
    gets no inner update (None out, its inner state untouched) and keeps its sum for the
    next cycle, so every gradient is applied once, divided by k. (optax keeps a Welford
    running mean instead of the sum; the mean is the same up to rounding.)

    With torch: for an int ``every_k_schedule``, call ``i`` (from 0) is final when
    ``(i + 1) % k == 0``, known on the host (what DDP's ``no_sync`` needs).

    Args:
      opt: the inner optimizer.
      every_k_schedule: k, an int >= 1, or a function of the 0-d int32 ``gradient_step``
        returning k (an int or 0-d tensor).
      use_grad_mean: apply the inner optimizer to the mean (True, default) or the sum.
      should_skip_update_fn: ``fn(updates, gradient_step, params) -> (skip, skip_state)``
        with ``skip`` a 0-d bool tensor; a skipped call returns zeros and changes no state
        but ``skip_state`` (see :func:`skip_not_finite`, :func:`skip_large_updates`).
        Default None (never skip).
      accumulator_dtype: dtype of ``acc_grads`` for real floating params (e.g.
        ``torch.float32`` for bf16 params). Default None: each param's dtype. The inner
        optimizer receives the mean or sum cast to the gradient's dtype.

    Example:
      >>> import torch, functional_optim as fo
      >>> from functional_optim.wrappers.accumulation import MultiSteps
      >>> opt = MultiSteps(fo.sgd(lr=1.0), every_k_schedule=2)
      >>> params = {"w": torch.zeros(1)}
      >>> state = opt.init(params)
      >>> u1, state = opt.update({"w": torch.tensor([1.0])}, state, params)
      >>> u2, state = opt.update({"w": torch.tensor([3.0])}, state, params)
      >>> u1["w"], u2["w"], opt.has_updated(state)
      (tensor([0.]), tensor([-2.]), tensor(True))
    """

    def __init__(self, opt: GradientTransformation,
                 every_k_schedule: Union[int, Callable[[torch.Tensor], Any]],
                 use_grad_mean: bool = True,
                 should_skip_update_fn: ShouldSkipUpdateFn | None = None,
                 accumulator_dtype: torch.dtype | None = None):
        if not isinstance(opt, GradientTransformation):
            raise TypeError(f"opt must be a GradientTransformation, got {type(opt).__name__}")
        if isinstance(every_k_schedule, bool) or not (isinstance(every_k_schedule, int)
                                                      or callable(every_k_schedule)):
            raise TypeError("every_k_schedule must be an int or a function of the gradient step, "
                            f"got {type(every_k_schedule).__name__}")
        if isinstance(every_k_schedule, int) and every_k_schedule < 1:
            raise ValueError(f"Invalid every_k_schedule: {every_k_schedule} (expected every_k_schedule >= 1)")
        if not isinstance(use_grad_mean, bool):
            raise TypeError(f"use_grad_mean must be a bool, got {type(use_grad_mean).__name__}")
        if should_skip_update_fn is not None and not callable(should_skip_update_fn):
            raise TypeError("should_skip_update_fn must be callable or None, got "
                            f"{type(should_skip_update_fn).__name__}")
        if accumulator_dtype is not None and not (isinstance(accumulator_dtype, torch.dtype)
                                                  and accumulator_dtype.is_floating_point):
            raise TypeError(f"accumulator_dtype must be a floating torch.dtype or None, got {accumulator_dtype!r}")
        self._opt = opt
        self._every_k_schedule = every_k_schedule
        self._use_grad_mean = use_grad_mean
        self._should_skip_update_fn = should_skip_update_fn
        self._accumulator_dtype = accumulator_dtype

    @property
    def inner_opt(self) -> GradientTransformation:
        """The wrapped optimizer."""
        return self._opt

    def _k(self, gradient_step: torch.Tensor) -> Any:
        if isinstance(self._every_k_schedule, int):
            return self._every_k_schedule
        return self._every_k_schedule(gradient_step)

    def _acc_dtype(self, p: torch.Tensor) -> torch.dtype:
        if self._accumulator_dtype is not None and p.is_floating_point():
            return self._accumulator_dtype
        return p.dtype

    def _skip(self, updates: Any, gradient_step: torch.Tensor, params: Any) -> tuple[torch.Tensor, Any]:
        result = self._should_skip_update_fn(updates, gradient_step, params)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise ValueError("should_skip_update_fn must return (should_skip, skip_state)")
        skip, skip_state = result
        if not (isinstance(skip, torch.Tensor) and skip.dtype == torch.bool and skip.dim() == 0):
            raise ValueError("should_skip_update_fn must return a 0-d bool tensor as should_skip, got "
                             f"{skip!r}")
        return skip, skip_state

    def init(self, params: Any) -> MultiStepsState:
        """The initial state: zero counters and accumulators, the inner optimizer's state."""
        device = steps.first_device(params)
        skip_state: Any = ()
        if self._should_skip_update_fn is not None:
            zeros = tree_map(torch.zeros_like, params)
            _, skip_state = self._skip(zeros, steps.zero_count(device), params)
        return MultiStepsState(
            mini_step=steps.zero_count(device), gradient_step=steps.zero_count(device),
            inner_opt_state=self._opt.init(params),
            acc_grads=tree_map(lambda p: torch.zeros_like(p, dtype=self._acc_dtype(p)), params),
            skip_state=skip_state)

    def update(self, updates: Any, state: MultiStepsState, params: Any = None,
               **extra: Any) -> tuple[Any, MultiStepsState]:
        """Accumulate ``updates``; return the inner optimizer's updates at the final
        mini-step, zeros otherwise (see the class docstring)."""
        if not isinstance(state, MultiStepsState):
            raise ValueError("state must be a MultiStepsState (made by MultiSteps.init), got "
                             f"{type(state).__name__}")
        donate = bool(extra.pop("donate", False))
        sel = select(updates, acc_grads=state.acc_grads)
        g, acc = sel.updates, sel["acc_grads"]
        every_k = self._k(state.gradient_step)
        mini_step = state.mini_step

        contrib = k.cast(g, [a.dtype for a in acc])
        skip, skip_state = None, state.skip_state
        if self._should_skip_update_fn is not None:
            skip, skip_state = self._skip(updates, state.gradient_step, params)
            skip = skip.to(mini_step.device)
            # where, not a product: NaN or Inf in a skipped gradient must not reach the sum
            contrib = k.where(~skip, contrib, 0.0)
        total = k.add(acc, contrib, donate=donate)

        final = mini_step + 1 >= every_k
        if not isinstance(final, torch.Tensor):  # a Python int k with a Python comparison
            final = torch.as_tensor(final, device=mini_step.device)
        if skip is not None:
            final = final & ~skip
        # the inner optimizer's input: the mean (or sum) in each gradient's dtype
        inner_in = [t / every_k for t in total] if self._use_grad_mean else list(total)
        inner_in = k.cast(inner_in, [x.dtype for x in g])
        inner_updates, inner_state = self._opt.update(sel.rebuild(inner_in), state.inner_opt_state,
                                                      params, **extra)
        inner_state = tree_where(final, inner_state, state.inner_opt_state, name="inner optimizer state")
        out = zeros_where_not(final, inner_updates, updates if donate else None)
        # the applied sums restart from zero (in place into our own buffers when donated)
        new_acc = k.masked_fill(total, [final] * len(total), 0, donate=donate)

        next_mini = torch.where(final, 0, mini_step + 1)
        if skip is not None:
            next_mini = torch.where(skip, mini_step, next_mini)
        return out, MultiStepsState(
            mini_step=next_mini.to(steps.COUNT_DTYPE),
            gradient_step=state.gradient_step + final.to(steps.COUNT_DTYPE),
            inner_opt_state=inner_state,
            acc_grads=sel.rebuild(new_acc, "acc_grads"),
            skip_state=skip_state)

    def has_updated(self, state: MultiStepsState) -> torch.Tensor:
        """A 0-d bool tensor: whether the call that produced ``state`` applied the inner
        optimizer (``mini_step == 0 and gradient_step > 0``)."""
        return (state.mini_step == 0) & (state.gradient_step > 0)

    def gradient_transformation(self) -> GradientTransformation:
        """This accumulator as a plain :class:`GradientTransformation` ``(init, update)``,
        declaring what it needs (:class:`~functional_optim.Needs`): the inner optimizer's
        needs, a global reduction for the package's skip functions, and anything for a
        skip function of the user's."""

        def update_fn(updates, state, params=None, **extra):
            return self.update(updates, state, params, **extra)

        skip = self._should_skip_update_fn
        skip = getattr(skip, "func", skip)  # functools.partial(skip_large_updates, ...)
        if skip is None:
            needed = needs(self._opt)
        elif skip in (skip_not_finite, skip_large_updates):
            needed = needs_of_all(self._opt, at_least=Needs.GLOBAL)
        else:
            needed = Needs.MATRIX
        return declare(GradientTransformation(self.init, update_fn), needed)


def skip_not_finite(updates: Any, gradient_step: torch.Tensor, params: Any) -> tuple[torch.Tensor, dict]:
    """A ``should_skip_update_fn`` for :class:`MultiSteps`: skip a mini-step whose
    gradients hold a NaN or an Inf.

    Returns ``(should_skip, {"should_skip": ..., "num_not_finite": <0-d int64>})``.

    Example:
      >>> import torch
      >>> from functional_optim.wrappers.accumulation import skip_not_finite
      >>> skip, info = skip_not_finite({"w": torch.tensor([1.0, float("nan")])}, torch.tensor(0), None)
      >>> skip, info["num_not_finite"]
      (tensor(True), tensor(1))
    """
    del gradient_step, params
    count = k.count_nonfinite(leaves(updates))
    should_skip = count > 0
    return should_skip, {"should_skip": should_skip, "num_not_finite": count}


def skip_large_updates(updates: Any, gradient_step: torch.Tensor, params: Any,
                       max_squared_norm: float) -> tuple[torch.Tensor, dict]:
    """A ``should_skip_update_fn`` for :class:`MultiSteps`: skip a mini-step whose
    gradients' squared global norm is not below ``max_squared_norm`` (NaN included).

    Bind the threshold first: ``functools.partial(skip_large_updates, max_squared_norm=10.0)``.
    Returns ``(should_skip, {"should_skip": ..., "norm_squared": <0-d float>})``; the norm
    accumulates in float32 at least.

    Example:
      >>> import functools, torch
      >>> from functional_optim.wrappers.accumulation import skip_large_updates
      >>> fn = functools.partial(skip_large_updates, max_squared_norm=10.0)
      >>> skip, info = fn({"w": torch.tensor([3.0, 4.0])}, torch.tensor(0), None)
      >>> skip, info["norm_squared"]
      (tensor(True), tensor(25.))
    """
    del gradient_step, params
    xs = leaves(updates)
    norm_sq = k.global_norm(xs, k.norm_dtype(xs), squared=True) if xs else torch.zeros(())
    should_skip = ~(norm_sq < max_squared_norm)
    return should_skip, {"should_skip": should_skip, "norm_squared": norm_sq}

