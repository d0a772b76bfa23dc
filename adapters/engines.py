"""How a param group's step runs: one engine per group, chosen when the group is made.

* :class:`EagerEngine` (``compile=False``, the default): per-param leaves; the step runs
  torch's fused kernel where a drop-in's algorithm is exactly one (``adapters.fused``),
  torch's for-loop in place for the other torch drop-ins (``adapters.eager_steps``),
  else the functional update eagerly, donating scratch buffers (or the grads).
* :class:`CompiledEngine` (``compile=True``, a transform with per-param matrix structure,
  or params the flat buffers cannot hold): per-param leaves, the step one compiled graph.
* :class:`FlatEngine` (``compile=True``, a transform the flat buffers serve, see
  ``flat.serves``): params and grads packed into flat buffers, one compiled graph over the
  buckets, whose size does not grow with the number of params.

Each has the same small interface: ``leaves`` (what ``init`` sees as params), ``entries``
(the state per param, by name), ``load`` (a state in the engine's form from named
entries: pure, returns None if this engine cannot hold them), ``successor`` (the engine
for a rebuilt transform), ``grads`` (the step's gradients, or a reason not to step),
``step`` and ``zero_grad``. The group (``adapters.optimizer``) owns every transition
between them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optree
import torch

import functional_optim as fo
from functional_optim import kernels as k

from . import eager_steps, flat, fused, state_io
from .flat import FlatLayout
from .traced import TracedStep, torch_compiled

Entry = dict[str, Any]

SKIP = "skip"  # no param of the group has a gradient: as torch, leave it alone
PER_PARAM = "per-param"  # the flat buffers cannot take this step's gradients


@dataclass
class StepCall:
    """What an engine needs from the group for one step.

    Attributes:
      group: the param group dict (current hyperparameter values).
      tx: the transform fed with the group's hyperparameter tensors (compiled engines).
      eager_tx: builds the transform from plain numbers (eager steps, and any step a
        user's ``torch.compile`` traces: it reads the group's own values there).
      extra: keyword arguments for ``update`` (the closure's ``value``).
      fused_family: the drop-in's in-place eager step: a fused-kernel family
        (``adapters.fused``), one of ``adapters.eager_steps.FAMILIES``, or None.
      donate_grads: whether ``p.grad`` may serve as scratch.
    """

    group: dict[str, Any]
    tx: fo.GradientTransformation
    eager_tx: Callable[[], fo.GradientTransformation]
    extra: dict[str, Any]
    fused_family: str | None = None
    donate_grads: bool = False


class _LeafEngine:
    """Shared by the engines that give the transform one leaf per param."""

    layout: FlatLayout | None = None

    def leaves(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(params)

    def entries(self, state: Any, params: list[torch.Tensor]) -> list[Entry]:
        return state_io.per_param(state, len(params))

    def load(self, tx: fo.GradientTransformation, params: list[torch.Tensor], entries: list[Entry]) -> Any:
        return state_io.rebuild(tx.init(list(params)), len(params), entries, fit)

    def grads(self, params: list[torch.Tensor]) -> list | str:
        grads = [p.grad for p in params]
        return SKIP if all(g is None for g in grads) else grads

    def zero_grad(self, params: list[torch.Tensor], set_to_none: bool) -> None:
        for p in params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
                continue
            if p.grad.grad_fn is not None:
                p.grad.detach_()
            else:
                p.grad.requires_grad_(False)
            p.grad.zero_()


class EagerEngine(_LeafEngine):
    """Eager steps on per-param leaves.

    Holds scratch buffers the functional update donates instead of ``p.grad``, made with
    the engine so the first step looks like every later one; optimizers that donate the
    grads, or may dispatch to torch's fused kernels (which need none), make them on use.
    """

    kind = "eager"

    def __init__(self, params: list[torch.Tensor], lazy_scratch: bool,
                 work: list[torch.Tensor | None] | None = None):
        self.lazy_scratch = lazy_scratch
        self._split: tuple | None = None
        self.scratch = eager_steps.Scratch()  # the in-place steps' buffers, made on use
        self.work = work if work is not None else [
            None if lazy_scratch or p.is_sparse else torch.zeros_like(p) for p in params]

    def successor(self, tx: fo.GradientTransformation, params: list[torch.Tensor]) -> EagerEngine:
        return EagerEngine(params, self.lazy_scratch, self.work)

    def step(self, call: StepCall, params: list[torch.Tensor], grads: list, state: Any) -> Any:
        if torch.compiler.is_compiling():  # traced by a user's torch.compile
            write_back_step(call.eager_tx(), params, grads, state, call.extra)
            return state
        family = call.fused_family
        if family is not None and fused.applies(family, call.group, params, grads):
            call.eager_tx()  # validates the group's current values
            fused.step(family, call.group, params, grads, self.scratch.entries(state, len(params)))
            return state
        if (family in eager_steps.FAMILIES and call.group.get("fused") is not False
                and eager_steps.applies(family, call.group, params, grads)):
            call.eager_tx()  # validates the group's current values
            eager_steps.step(family, call.group, params, grads, state, self.scratch)  # torch's for-loop
            return state
        dense = all(g is None or not g.is_sparse for g in grads)
        tx = call.eager_tx()
        head, scale = self.split(tx)
        head_state = state[:-1] if head is not tx else state
        if dense and not call.donate_grads:
            # the first kernel that would overwrite a grad writes into our buffer instead
            # (no copy pass), the user's p.grad stays as it was
            with k.donations_into(grads, self.work_for(grads)):
                updates, head_state = head.update(grads, head_state, params, donate=True, **call.extra)
        else:
            updates, head_state = head.update(grads, head_state, params, donate=dense, **call.extra)
        fo.apply_updates_(params, updates, scale)
        return (*head_state, state[-1]) if head is not tx else head_state

    def split(self, tx: fo.GradientTransformation) -> tuple[fo.GradientTransformation, float]:
        """``tx`` without a final multiplication by a number, and that number (1 if none):
        the apply adds ``scale * u`` in one pass instead of two (cached per transform)."""
        if self._split is None or self._split[0] is not tx:
            self._split = (tx, *(fo.combine.split_final_scale(tx) or (tx, 1.0)))
        return self._split[1], self._split[2]

    def work_for(self, grads: list) -> list:
        """Buffers this engine owns, one per present grad (allocated once, reused)."""
        for i, g in enumerate(grads):
            buf = self.work[i]
            if g is not None and (buf is None or buf.shape != g.shape or buf.dtype != g.dtype
                                  or buf.device != g.device):
                self.work[i] = torch.empty_like(g)
        return self.work


class CompiledEngine(_LeafEngine):
    """Per-param leaves, the step as one compiled graph (made at the first step)."""

    kind = "compiled"

    def __init__(self) -> None:
        self.compiled: Callable | None = None

    def successor(self, tx: fo.GradientTransformation, params: list[torch.Tensor]) -> CompiledEngine:
        return CompiledEngine()

    def step(self, call: StepCall, params: list[torch.Tensor], grads: list, state: Any) -> Any:
        self.compiled = run_graph(self.compiled, call, params, grads, state, None)
        return state


class FlatEngine:
    """Params and grads packed into flat buffers (``adapters.flat``), one compiled graph."""

    kind = "flat"

    def __init__(self, layout: FlatLayout):
        self.layout = layout
        self.compiled: Callable | None = None

    @staticmethod
    def holds(tx: fo.GradientTransformation, params: list[torch.Tensor]) -> bool:
        """Whether the flat buffers serve ``tx`` on ``params`` (dense floating tensors; not
        DTensors: a shard's placement cannot become a view of a local buffer)."""
        return flat.serves(tx) and all(p.is_floating_point() and not p.is_sparse and not k.is_dtensor(p)
                                       for p in params)

    def successor(self, tx: fo.GradientTransformation, params: list[torch.Tensor]
                  ) -> FlatEngine | CompiledEngine:
        return FlatEngine(self.layout) if flat.serves(tx, self.layout) else CompiledEngine()

    def leaves(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        return [b.params for b in self.layout.buckets]

    def entries(self, state: Any, params: list[torch.Tensor]) -> list[Entry]:
        return self.layout.leaf_entries(state)

    def load(self, tx: fo.GradientTransformation, params: list[torch.Tensor], entries: list[Entry]) -> Any:
        """The flat state from per-param entries; None if the flat form cannot hold them
        (e.g. params with different step counts). Per-param scalar state (``(nblocks, 1)``,
        see ``flat.init``) takes each param's value on all of its blocks."""
        leaf_state = state_io.rebuild(tx.init(list(params)), len(params), entries, fit)
        template = flat.init(tx, self.leaves(params), self.layout.segments)
        bucket_entries, consistent = self.layout.flat_entries(
            state_io.per_param(leaf_state, len(params)), template)
        if not consistent:
            return None
        return state_io.rebuild(template, len(self.layout.buckets), bucket_entries, fit)

    def grads(self, params: list[torch.Tensor]) -> list | str:
        present = self.layout.gather_grads(params)
        if not any(present):
            return SKIP
        if not all(present) or any(p.grad.is_sparse for p in params):
            for p, has in zip(params, present):
                if not has:  # a zeroed view no backward reached since zero_grad: torch's None
                    p.grad = None
            return PER_PARAM
        return [b.grads for b in self.layout.buckets]

    def step(self, call: StepCall, params: list[torch.Tensor], grads: list, state: Any) -> Any:
        buffers, graph_state = self.leaves(params), state
        if self.layout.segmented:
            # the whole step in the (nblocks, B) shape of its segmented reductions (params,
            # grads, state, write-back): 1-D buffers beside 2-D views would split inductor's
            # kernel into several loops with param-sized intermediates
            view = flat.block_view(grads, self.layout.segments)
            buffers, grads, graph_state = [view(b) for b in buffers], [view(g) for g in grads], \
                optree.tree_map(view, state)
        self.compiled = run_graph(self.compiled, call, buffers, grads, graph_state, self.layout.segments)
        return state

    def zero_grad(self, params: list[torch.Tensor], set_to_none: bool) -> None:
        self.layout.zero_grads(params, set_to_none)


Engine = EagerEngine | CompiledEngine | FlatEngine


def choose(compile: bool, tx: fo.GradientTransformation, params: list[torch.Tensor],
           lazy_scratch: bool) -> Engine:
    """The engine a new group starts with (a flat layout packs the params now)."""
    if not compile:
        return EagerEngine(params, lazy_scratch)
    if FlatEngine.holds(tx, params):
        # padding and segment tables only where per-param reductions need them: elementwise
        # and global steps then run on plain buffers (no per-step masking of the padding)
        return FlatEngine(FlatLayout(params, segmented=fo.needs(tx) > fo.Needs.GLOBAL))
    return CompiledEngine()


def fit(value: Any, like: torch.Tensor) -> torch.Tensor:
    """A loaded value as a new tensor shaped, typed and placed like the template leaf."""
    value = torch.as_tensor(value)
    if value.shape != like.shape:
        raise ValueError(f"state_dict entry has shape {tuple(value.shape)}, expected {tuple(like.shape)}")
    if k.is_dtensor(value) != k.is_dtensor(like):
        return _fit_distributed(value.detach(), like)
    return value.detach().to(dtype=like.dtype, device=like.device, copy=True)


def _fit_distributed(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A value and a template of which one is a DTensor: a DTensor value (a replicated
    norm saved by an eager step) for a plain leaf is its full value; a full value for a
    DTensor leaf (a checkpoint of an unsharded run) is split like the leaf (every rank
    loads it, as for any distributed load)."""
    if k.is_dtensor(value):
        return value.full_tensor().to(dtype=like.dtype, device=like.device, copy=True)
    from torch.distributed.tensor import distribute_tensor
    value = value.to(dtype=like.dtype, device=like.device, copy=True)
    return distribute_tensor(value, like.device_mesh, like.placements)


# -- compiled steps ---------------------------------------------------------------------

def run_graph(compiled: Callable | None, call: StepCall, params: list, grads: list, state: Any,
              segments: Any) -> Callable | None:
    """One step through the compiled graph (made on first use, and returned), or, inside
    a user's ``torch.compile``, traced into theirs: our hyperparameter tensors are not
    refreshed there (the refresh is host code the graph does not replay), so the
    transform reads the group's own values, as the eager step does under tracing."""
    if torch.compiler.is_compiling():
        write_back_step(call.eager_tx(), params, grads, state, call.extra, segments)
        return compiled
    if compiled is None:
        compiled = compile_step(call.tx, flat=segments is not None)
    compiled(params, grads, state, call.extra, segments)
    return compiled


def write_back_step(tx: fo.GradientTransformation, params: list[torch.Tensor], grads: list,
                    state: Any, extra: dict[str, Any], segments: Any = None) -> None:
    """A pure update, then its results written into the existing param and state buffers.

    How every traced step runs (our compiled step, or a user's torch.compile of ``step``):
    measured 3-8x faster than returning new tensors. Writes go through 1-element views:
    torch.compile (2.13) traces a 0-d float64 CPU tensor as a Python float and drops
    in-place writes to it (a scalar param's Adam moments would never change).
    """
    if segments is None:
        updates, new_state = tx.update(grads, state, params, **extra)
    else:  # flat buckets
        updates, new_state = flat.update(tx, grads, state, params, segments, **extra)
    for p, u in zip(params, updates):
        if u is not None:
            _one_d(p).add_(_one_d(u.to(p.dtype)))
    for old, new in zip(optree.tree_leaves(state), optree.tree_leaves(new_state)):
        if k.is_dtensor(new) and not k.is_dtensor(old):
            # a reduction over sharded values (the clip's global norm) comes back as a
            # replicated or partial DTensor; a plain state leaf holds its full value
            new = new.full_tensor()
        _one_d(old).copy_(_one_d(new))


def _one_d(t: torch.Tensor) -> torch.Tensor:
    return t.view(1) if t.dim() == 0 else t


def compile_step(tx: fo.GradientTransformation, flat: bool = False) -> Callable:
    """The whole step in one graph (see :func:`write_back_step`). ``flat``: over a flat
    layout's buffers, traced once and compiled by inductor without dynamo
    (``adapters.traced``: a few arguments, checked cheaply per call; reductions there
    recompute rather than store, see ``_RECOMPUTE``). Per-param leaves go through
    ``torch.compile``, whose guards check hundreds of tensors faster than Python can."""

    def step(params, grads, state, extra, segments):
        write_back_step(tx, params, grads, state, extra, segments)

    if not flat:
        return torch_compiled(step)
    options = _RECOMPUTE if fo.needs(tx) >= fo.Needs.GLOBAL else None
    return TracedStep(step, options)


# Inductor stores an elementwise result read by a reduction and again after it (LAMB's
# update before its trust ratio) in a fresh buffer each step unless these thresholds are
# raised; recomputing it costs a few flops, a param-sized allocation costs a page fault per
# 4 KiB (timm Lamb on RN50, compiled, 1 thread, loaded machine: 501-658 -> 208-251 ms).
# Flat-engine reductions only: on per-leaf graphs (LEAVES, MATRIX) the recomputation
# multiplies the kernels' size and their compile time (add_noise: minutes).
_RECOMPUTE = {"realize_reads_threshold": 100, "realize_opcount_threshold": 1000,
              "realize_acc_reads_threshold": 100}
