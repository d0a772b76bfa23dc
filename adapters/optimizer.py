"""``FunctionalOptimizer``: any functional transform as a real ``torch.optim.Optimizer``."""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Iterable
from typing import Any

import optree
import torch
from torch.optim.optimizer import required

import functional_optim as fo
from functional_optim import kernels as k

from . import flat, fused, state_io
from .flat import FlatLayout
from .hyperparams import GroupHyperparams, check_transform, factory_defaults, structure_key

Entry = dict[str, Any]


class _Group:
    """The functional side of one param group: its transform, state and step engine."""

    def __init__(self, opt: FunctionalOptimizer, group: dict[str, Any]):
        self.opt = opt
        params = group["params"]
        self.hyper = None
        if opt._factory is not None:
            # per-step scalars in the precision torch.optim uses (Python doubles)
            self.hyper = GroupHyperparams(group, opt._names, k.scalar_dtype(params[0]), params[0].device)
        self.key, self.tx = self.build(group)
        self.flat: FlatLayout | None = None
        if opt._compile and flat.serves(self.tx) and all(
                p.is_floating_point() and not p.is_sparse for p in params):
            self.flat = FlatLayout(params)
        self.state = self.tx.init(self.engine_params(params))
        # per-param state the current transform does not use, kept as torch keeps state
        # a changed hyperparameter stops using (a momentum buffer while momentum is 0)
        self.dormant: list[Entry] = [{} for _ in params]
        # scratch buffers the eager step donates instead of p.grad; made with the state,
        # so the first step (traced or not) looks like every later one. Optimizers that
        # may dispatch to torch's fused kernels (which need none) make them on first use.
        lazy = self.flat is not None or opt._donate_grads or opt._fused_family is not None
        self.work: list[torch.Tensor | None] = [
            None if lazy or p.is_sparse else torch.zeros_like(p) for p in params]
        self.compiled: Callable | None = None
        self.eager: tuple[Any, fo.GradientTransformation] | None = None  # (kwargs, tx) with numbers

    # -- building -----------------------------------------------------------------

    def build(self, group: dict[str, Any]) -> tuple[tuple, fo.GradientTransformation]:
        opt = self.opt
        if opt._factory is None:
            return (), opt._fixed
        self.hyper.refresh(group)  # the factory validates the values it is fed
        tx = opt._factory(**self.hyper.factory_kwargs(group))
        if not isinstance(tx, fo.GradientTransformation):
            raise TypeError(f"the transform factory returned {type(tx).__name__}, "
                            "expected a GradientTransformation")
        return structure_key(group, opt._names), tx

    def engine_params(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        return [b.params for b in self.flat.buckets] if self.flat else list(params)

    def rebuild_if_needed(self, group: dict[str, Any]) -> None:
        """Rebuild the transform when a structural hyperparameter changed, keeping the state."""
        if self.opt._factory is None or structure_key(group, self.opt._names) == self.key:
            return
        entries = self.entries(group["params"])
        self.key, self.tx = self.build(group)
        if self.flat is not None and not flat.serves(self.tx):
            self.flat = None
        self.state = self.state_from_entries(group["params"], entries)
        self.keep_dormant(group["params"], entries)
        self.compiled = None
        self.eager = None

    # -- state in per-param form ----------------------------------------------------

    def entries(self, params: list[torch.Tensor]) -> list[Entry]:
        return [{**dormant, **used} for dormant, used in zip(self.dormant, self.used_entries(params))]

    def used_entries(self, params: list[torch.Tensor]) -> list[Entry]:
        if self.flat is not None:
            return self.flat.leaf_entries(self.state)
        return state_io.per_param(self.state, len(params))

    def keep_dormant(self, params: list[torch.Tensor], entries: list[Entry]) -> None:
        """Keep the entries the current state does not hold, to be restored by a later rebuild."""
        used = self.used_entries(params)
        self.dormant = [{n: v.clone() if isinstance(v, torch.Tensor) else v
                         for n, v in e.items() if n not in u} for e, u in zip(entries, used)]

    def state_from_entries(self, params: list[torch.Tensor], entries: list[Entry]) -> Any:
        """A fresh state for the current transform, filled from named per-param entries.

        Pure: raises before anything changes if an entry does not fit. Switches the group
        to per-param mode if the flat form cannot hold the entries (e.g. params with
        different step counts).
        """
        leaf_state = state_io.rebuild(self.tx.init(list(params)), len(params), entries, _fit)
        if self.flat is None:
            return leaf_state
        flat_template = self.tx.init(self.engine_params(params))
        bucket_entries, consistent = self.flat.flat_entries(
            state_io.per_param(leaf_state, len(params)), flat_template)
        if not consistent:
            self.flat = None
            self.compiled = None
            return leaf_state
        return state_io.rebuild(flat_template, len(self.flat.buckets), bucket_entries, _fit)

    def to_leaf_mode(self, params: list[torch.Tensor]) -> None:
        entries = [{n: v.clone() if v.dim() == 0 else v for n, v in e.items()} for e in self.entries(params)]
        self.flat = None
        self.compiled = None
        self.state = state_io.rebuild(self.tx.init(list(params)), len(params), entries, _fit)

    # -- stepping -------------------------------------------------------------------

    def step(self, group: dict[str, Any], extra: dict[str, Any]) -> None:
        self.rebuild_if_needed(group)
        if self.hyper is not None and not torch.compiler.is_compiling():
            self.hyper.refresh(group)
        params = group["params"]
        if self.flat is not None:
            present = self.flat.gather_grads(params)
            if all(present):
                return self.flat_step(group, extra)
            if not any(present):
                return None
            self.to_leaf_mode(params)
            for p, has in zip(params, present):
                if not has:  # a zeroed view no backward reached since zero_grad: torch's None
                    p.grad = None
        grads = [p.grad for p in params]
        if all(g is None for g in grads):
            return None  # as torch: a group without gradients is left alone
        if self.opt._compile:
            return self.compiled_leaf_step(group, grads, extra)
        return self.eager_step(group, grads, extra)

    def eager_transform(self, group: dict[str, Any]) -> fo.GradientTransformation:
        """The transform built from plain numbers (same structure and state as ``self.tx``);
        rebuilt when a value changes.

        While a user's torch.compile traces the step, it is built from the group's own
        values: tensors (a scheduled lr) become graph inputs, so changing them in place
        never recompiles, and nothing of ours is written inside the graph (torch 2.13
        drops in-place writes to 0-d float64 inputs such as our hyperparameter tensors).
        """
        if self.hyper is None:
            return self.tx
        if torch.compiler.is_compiling():
            return self.opt._factory(**{name: group[name] for name in self.opt._names})
        kwargs = self.hyper.number_kwargs(group)
        if self.eager is None or self.eager[0] != kwargs:
            self.eager = (kwargs, self.opt._factory(**kwargs))
        return self.eager[1]

    def eager_step(self, group: dict[str, Any], grads: list, extra: dict[str, Any]) -> None:
        params = group["params"]
        if torch.compiler.is_compiling():  # traced by a user's torch.compile
            return _step_and_write_back(self.eager_transform(group), list(params), grads, self.state, extra)
        family = self.opt._fused_family
        if family is not None and fused.applies(family, group, list(params), grads):
            self.eager_transform(group)  # validates the group's current values
            return fused.step(family, group, list(params), grads, self.state)
        dense = all(g is None or not g.is_sparse for g in grads)
        if dense and not self.opt._donate_grads:
            grads = self.copy_to_work(grads)
        tx = self.eager_transform(group)
        updates, self.state = tx.update(grads, self.state, list(params), donate=dense, **extra)
        fo.apply_updates_(list(params), updates)

    def copy_to_work(self, grads: list) -> list:
        """The grads copied into buffers this optimizer owns (allocated once)."""
        present = [i for i, g in enumerate(grads) if g is not None]
        for i in present:
            buf = self.work[i]
            if buf is None or buf.shape != grads[i].shape or buf.dtype != grads[i].dtype:
                self.work[i] = torch.empty_like(grads[i])
        work = [self.work[i] for i in present]
        k.copy(work, [grads[i] for i in present])
        out: list = [None] * len(grads)
        for i in present:
            out[i] = self.work[i]
        return out

    def flat_step(self, group: dict[str, Any], extra: dict[str, Any]) -> None:
        buckets = self.flat.buckets
        self.traced_or_compiled_step(group, [b.params for b in buckets], [b.grads for b in buckets], extra,
                                     self.flat.segments)

    def compiled_leaf_step(self, group: dict[str, Any], grads: list, extra: dict[str, Any]) -> None:
        self.traced_or_compiled_step(group, list(group["params"]), grads, extra)

    def traced_or_compiled_step(self, group: dict[str, Any], params: list, grads: list,
                                extra: dict[str, Any], segments: Any = None) -> None:
        if torch.compiler.is_compiling():
            # inside a user's torch.compile: our hyperparameter tensors are not refreshed
            # there (the refresh is host code the graph does not replay), so the transform
            # reads the group's own values, as the eager step does under tracing
            return _step_and_write_back(self.eager_transform(group), params, grads, self.state, extra,
                                        segments)
        if self.compiled is None:
            self.compiled = _compile_step(self.tx)
        self.compiled(params, grads, self.state, extra, segments)


def _fit(value: Any, like: torch.Tensor) -> torch.Tensor:
    """A loaded value as a new tensor shaped, typed and placed like the template leaf."""
    value = torch.as_tensor(value)
    if value.shape != like.shape:
        raise ValueError(f"state_dict entry has shape {tuple(value.shape)}, expected {tuple(like.shape)}")
    return value.detach().to(dtype=like.dtype, device=like.device, copy=True)


def _step_and_write_back(tx: fo.GradientTransformation, params: list[torch.Tensor], grads: list,
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
        _one_d(old).copy_(_one_d(new))


def _one_d(t: torch.Tensor) -> torch.Tensor:
    return t.view(1) if t.dim() == 0 else t


def _compile_step(tx: fo.GradientTransformation) -> Callable:
    """The whole step in one graph (see ``_step_and_write_back``)."""

    def step(params, grads, state, extra, segments):
        _step_and_write_back(tx, params, grads, state, extra, segments)

    # dynamo caches compiled code per code object (8 entries by default); a private copy
    # of the code gives every group its own cache, so many groups or optimizers coexist
    own = types.FunctionType(step.__code__.replace(), step.__globals__, step.__name__,
                             step.__defaults__, step.__closure__)
    return torch.compile(own, fullgraph=True, dynamic=False)


class FunctionalOptimizer(torch.optim.Optimizer):
    """A functional transform as a ``torch.optim.Optimizer``.

    Args:
      params: an iterable of tensors, of ``(name, tensor)`` pairs, or of param-group dicts.
      transform: a ``GradientTransformation`` (used as is for every group), or a factory
        such as ``fo.adamw`` (or any function returning a transform) whose keyword
        arguments become each group's hyperparameters (``group['lr']``, ...).
      compile: run each step as one ``torch.compile``d graph (default False). Groups whose
        transform needs at most global reductions (``fo.needs(tx) <= fo.Needs.GLOBAL``:
        elementwise math, global-norm clipping, finite checks) and whose params are dense
        floating tensors are then packed per (device, dtype) into flat buffers, params and
        grads becoming views into them; ``zero_grad`` zeroes the grad buffers and keeps
        the views. The first step compiles (seconds); changing numeric hyperparameters
        never recompiles.
      donate_grads: let the step overwrite ``p.grad`` as scratch space (saves one copy
        per step in eager mode). Default False: ``p.grad`` is left unchanged.
      **hyperparams: defaults for the factory's keyword arguments.

    Numeric hyperparameters (Python numbers or one-element tensors, in groups) are fed to
    the transform as tensors refreshed before every step, so LR schedulers and manual
    changes take effect immediately. A change that alters the transform's structure
    (a bool, or a number becoming or ceasing to be zero, such as momentum) rebuilds it,
    keeping the state. A param whose ``grad`` is None is skipped, as in torch.optim.

    Example:
      >>> import torch, functional_optim as fo
      >>> from adapters import FunctionalOptimizer
      >>> model = torch.nn.Linear(3, 1)
      >>> opt = FunctionalOptimizer(model.parameters(), fo.adamw, lr=1e-2, weight_decay=0.1)
      >>> model(torch.randn(4, 3)).sum().backward()
      >>> opt.step()
      >>> opt.param_groups[0]["lr"]
      0.01
    """

    _passthrough: dict[str, Any] = {}  # torch-only group keys kept for drop-in compatibility
    _fused_family: str | None = None  # "adam", "sgd": eager steps may run torch's fused kernels (adapters.fused)

    def __init__(self, params: Iterable[Any], transform: Any, *, compile: bool = False,
                 donate_grads: bool = False, **hyperparams: Any):
        factory, fixed = check_transform(transform)
        self._factory, self._fixed = factory, fixed
        self._compile, self._donate_grads = bool(compile), bool(donate_grads)
        self._groups: list[_Group] = []
        if factory is None:
            if hyperparams:
                raise TypeError(f"hyperparameters {sorted(hyperparams)} need a transform factory, "
                                "not a GradientTransformation")
            defaults: dict[str, Any] = {}
        else:
            defaults = factory_defaults(factory)
            unknown = sorted(set(hyperparams) - set(defaults))
            if unknown:
                raise TypeError(f"unknown hyperparameter(s) {unknown} for "
                                f"{getattr(factory, '__name__', factory)}; accepted: {sorted(defaults)}")
            defaults.update(hyperparams)
            defaults = {n: required if v is inspect.Parameter.empty else v for n, v in defaults.items()}
        self._names = list(defaults)
        super().__init__(params, {**defaults, **self._passthrough})

    # -- groups ---------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (fine-tuning unfreezes layers); its transform is built and validated now."""
        super().add_param_group(param_group)
        try:
            self._groups.append(_Group(self, self.param_groups[-1]))
        except BaseException:
            self.param_groups.pop()
            raise

    # -- torch.optim's state view ------------------------------------------------------

    @property
    def state(self) -> dict[torch.Tensor, Entry]:  # type: ignore[override]
        """Per-param state by name (read-only view, built on access)."""
        out = {}
        for group, rt in zip(self.param_groups, getattr(self, "_groups", [])):
            for p, entry in zip(group["params"], rt.entries(group["params"])):
                out[p] = self._export_entry(entry)
        return out

    @state.setter
    def state(self, value: Any) -> None:  # torch's base __init__ assigns an empty dict
        pass

    def _export_entry(self, entry: Entry) -> Entry:
        """Per-param state in this class's state_dict format (drop-ins: torch's keys)."""
        return dict(entry)

    def _import_entry(self, entry: Entry) -> Entry:
        return dict(entry)

    # -- stepping -------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One optimization step; returns the closure's loss (also passed to transforms as ``value``)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        extra = {} if loss is None else {"value": loss}
        for group, rt in zip(self.param_groups, self._groups):
            rt.step(group, extra)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As torch's; flat-packed groups zero their grad buffer in place and keep the views."""
        for group, rt in zip(self.param_groups, self._groups):
            if rt.flat is not None:
                rt.flat.zero_grads(group["params"], set_to_none)
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    if p.grad.grad_fn is not None:
                        p.grad.detach_()
                    else:
                        p.grad.requires_grad_(False)
                    p.grad.zero_()

    # -- checkpoints ----------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """torch's format: ``{'state': {index: {name: tensor}}, 'param_groups': [...]}``."""
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {key: v for key, v in group.items() if key != "params"}
            packed["params"] = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append(packed)
        state = {}
        for group, rt in zip(self.param_groups, self._groups):
            for p, entry in zip(group["params"], rt.entries(group["params"])):
                exported = self._export_entry(entry)
                if exported:
                    state[index[id(p)]] = exported
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict (this class's or, for drop-ins, torch's). Validated in full
        before anything changes: on error the optimizer is left as it was."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups "
                             f"({len(saved_groups)} vs {len(self.param_groups)})")
        for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"loaded state dict contains a parameter group {i} that doesn't match "
                                 f"the size of optimizer's group ({len(saved['params'])} vs "
                                 f"{len(group['params'])})")
        saved_state = state_dict["state"]
        plans = []
        for saved, group, rt in zip(saved_groups, self.param_groups, self._groups):
            new_group = {**{key: v for key, v in saved.items() if key != "params"}, "params": group["params"]}
            if "param_names" in group and "param_names" not in saved:
                new_group["param_names"] = group["param_names"]
            entries = [self._import_entry(saved_state.get(idx, saved_state.get(str(idx), {})))
                       for idx in saved["params"]]
            plans.append((new_group, rt, entries))
        # build everything first (pure), then commit
        built = []
        saved_rt = [(rt.key, rt.tx, rt.flat, rt.compiled) for _, rt, _ in plans]
        try:
            for new_group, rt, entries in plans:
                key, tx = rt.build(new_group)
                old = (rt.key, rt.tx)
                rt.key, rt.tx = key, tx
                try:
                    built.append(rt.state_from_entries(new_group["params"], entries))
                finally:
                    rt.key, rt.tx = old
        except BaseException:
            for (_, rt, _), (key, tx, flat, compiled), group in zip(plans, saved_rt, self.param_groups):
                rt.key, rt.tx, rt.flat, rt.compiled = key, tx, flat, compiled
                if rt.hyper is not None:
                    rt.hyper.refresh(group)
            raise
        for (new_group, rt, entries), state, group in zip(plans, built, self.param_groups):
            group.clear()
            group.update(new_group)
            rt.key, rt.tx = rt.build(group)
            rt.state = state
            rt.keep_dormant(group["params"], entries)
            rt.compiled = rt.eager = None
            if rt.hyper is not None:
                rt.hyper.refresh(group)
