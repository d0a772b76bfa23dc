"""``FunctionalOptimizer``: any functional transform as a real ``torch.optim.Optimizer``."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.optimizer import required

import functional_optim as fo
from functional_optim import kernels as k

from . import engines, pickling
from .hyperparams import GroupHyperparams, check_transform, factory_defaults, structure_key
from .state_view import OptimizerState

Entry = dict[str, Any]


def _flags(values: list[bool]) -> torch.Tensor:
    """Per-param flags as a CPU bool tensor (see :meth:`_Group.step`)."""
    return torch.tensor(values, dtype=torch.bool)


@dataclass
class _Plan:
    """A group's next transform, engine and state, built without changing anything."""

    key: tuple
    hyper: GroupHyperparams | None
    tx: fo.GradientTransformation
    engine: engines.Engine
    state: Any
    dormant: list[Entry]


class _Group:
    """The functional side of one param group: its transform, state and engine.

    Every change of transform, engine or state (a structural hyperparameter change, a
    loaded state_dict, the flat engine handing over to per-param leaves) is planned in
    full first (:meth:`plan`, which changes nothing and raises on bad input), then
    committed (:meth:`commit`, which cannot fail).
    """

    def __init__(self, opt: FunctionalOptimizer, group: dict[str, Any], entries: list[Entry] | None = None,
                 stepped: list[bool] | None = None):
        """A new group holding the named per-param ``entries`` (default: the initial state);
        ``stepped``: which params have stepped (torch lists only those in ``state``)."""
        self.opt = opt
        params = list(group["params"])
        key, hyper, tx = self.build(group)
        lazy = opt._donate_grads or opt._fused_family is not None
        engine = engines.choose(opt._compile, tx, params, lazy)
        self.engine: engines.Engine = engine
        self.eager: tuple[Any, fo.GradientTransformation] | None = None  # (kwargs, tx) with numbers
        self.stepped = _flags(stepped if stepped is not None else [False] * len(params))
        entries = entries if entries is not None else [{} for _ in params]
        self.commit(self.plan(group, entries, engine=engine, built=(key, hyper, tx)))

    # -- transitions: plan, then commit -----------------------------------------------

    def build(self, group: dict[str, Any]) -> tuple[tuple, GroupHyperparams | None, fo.GradientTransformation]:
        """The group's structure key, fresh hyperparameter tensors and transform (pure;
        the factory validates the values it is fed)."""
        opt = self.opt
        if opt._factory is None:
            return (), None, opt._fixed
        first = group["params"][0]
        # per-step scalars in the precision torch.optim uses (Python doubles)
        hyper = GroupHyperparams(group, opt._names, k.scalar_dtype(first), first.device)
        tx = opt._factory(**hyper.factory_kwargs(group))
        if not isinstance(tx, fo.GradientTransformation):
            raise TypeError(f"the transform factory returned {type(tx).__name__}, "
                            "expected a GradientTransformation")
        return structure_key(group, opt._names), hyper, tx

    def plan(self, group: dict[str, Any], entries: list[Entry], *, engine: engines.Engine | None = None,
             built: tuple | None = None) -> _Plan:
        """The transform, engine and state for ``group`` holding the named per-param
        ``entries``; the engine is the current one's successor unless given. A flat
        engine that cannot hold the entries hands over to per-param leaves."""
        params = list(group["params"])
        key, hyper, tx = built if built is not None else self.build(group)
        engine = engine if engine is not None else self.engine.successor(tx, params)
        state = engine.load(tx, params, entries)
        if state is None:
            engine = engines.CompiledEngine()
            state = engine.load(tx, params, entries)
        used = engine.entries(state, params)
        dormant = [{n: v.clone() if isinstance(v, torch.Tensor) else v for n, v in e.items() if n not in u}
                   for e, u in zip(entries, used)]
        return _Plan(key, hyper, tx, engine, state, dormant)

    def commit(self, plan: _Plan) -> None:
        if self.engine.layout is not None and plan.engine.layout is not self.engine.layout:
            self.engine.layout.remove_hooks()
        self.key, self.hyper, self.tx = plan.key, plan.hyper, plan.tx
        self.engine, self.state, self.dormant = plan.engine, plan.state, plan.dormant
        self.eager = None

    def rebuild_if_needed(self, group: dict[str, Any]) -> None:
        """Rebuild the transform when a structural hyperparameter changed, keeping the state."""
        if self.opt._factory is not None and structure_key(group, self.opt._names) != self.key:
            self.commit(self.plan(group, self.entries(group["params"])))

    def to_per_param(self, group: dict[str, Any]) -> None:
        """Hand the flat engine's state over to per-param leaves (same transform)."""
        built = (self.key, self.hyper, self.tx)
        self.commit(self.plan(group, self.entries(group["params"]), engine=engines.CompiledEngine(),
                              built=built))

    def assign(self, group: dict[str, Any], index: int, entry: Entry | None) -> None:
        """Give param ``index`` the named state ``entry`` (None: its initial state), keeping
        the transform and the engine (a compiled step is not recompiled). A value the param
        shares with others (a group-wide leaf, a flat bucket's step count) changes for all
        of them: it is one value in the state."""
        params = list(group["params"])
        entries = self.entries(params)
        current, new = entries[index], dict(entry or {})
        for j, other in enumerate(entries):
            for name, value in new.items():
                if j != index and name in current and other.get(name) is current[name]:
                    other[name] = value
        entries[index] = new
        self.commit(self.plan(group, entries, engine=self.engine, built=(self.key, self.hyper, self.tx)))
        self.stepped[index] = entry is not None

    def reset(self, group: dict[str, Any]) -> None:
        """Every param back to its initial state (torch's ``state.clear()``)."""
        params = list(group["params"])
        self.commit(self.plan(group, [{} for _ in params], engine=self.engine,
                              built=(self.key, self.hyper, self.tx)))
        self.stepped = _flags([False] * len(params))

    # -- state in per-param form ----------------------------------------------------

    def entries(self, params: list[torch.Tensor]) -> list[Entry]:
        used = self.engine.entries(self.state, list(params))
        return [{**dormant, **u} for dormant, u in zip(self.dormant, used)]

    def snapshot(self, params: list[torch.Tensor]) -> tuple[list[Entry], list[bool]]:
        """The state as per-param entries with no views into shared buffers (a pickle of a
        view would store its whole buffer), and the stepped flags: what unpickling
        rebuilds the group from."""
        entries = [{n: v.clone() if isinstance(v, torch.Tensor) and v._base is not None else v
                    for n, v in e.items()} for e in self.entries(params)]
        return entries, self.stepped.tolist()

    # -- stepping -------------------------------------------------------------------

    def step(self, group: dict[str, Any], extra: dict[str, Any]) -> None:
        self.rebuild_if_needed(group)
        if self.hyper is not None and not torch.compiler.is_compiling():
            self.hyper.refresh(group)
        params = list(group["params"])
        grads = self.engine.grads(params)
        if grads is engines.PER_PARAM:
            self.to_per_param(group)
            grads = self.engine.grads(params)
        if grads is engines.SKIP:
            return
        call = engines.StepCall(group, self.tx, lambda: self.eager_transform(group), extra,
                                self.opt._fused_family, self.opt._donate_grads)
        self.state = self.engine.step(call, params, grads, self.state)
        # as torch, a param's state exists from its first step with a grad; the flags are a
        # tensor updated in place, so a user's torch.compile of the step guards on nothing here
        with_grad = [p.grad is not None for p in params]
        if all(with_grad):
            self.stepped.fill_(True)
        else:
            self.stepped.logical_or_(_flags(with_grad))

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


class FunctionalOptimizer(torch.optim.Optimizer):
    """A functional transform as a ``torch.optim.Optimizer``.

    Args:
      params: an iterable of tensors, of ``(name, tensor)`` pairs, or of param-group dicts.
      transform: a ``GradientTransformation`` (used as is for every group), or a factory
        such as ``fo.adamw`` (or any function returning a transform) whose keyword
        arguments become each group's hyperparameters (``group['lr']``, ...).
      compile: run each step as one ``torch.compile``d graph (default False). Groups whose
        transform needs at most per-param reductions (``fo.needs(tx) <= fo.Needs.PER_PARAM``:
        elementwise math, global-norm clipping, finite checks, per-param norms and trust
        ratios, which run as segmented reductions) and whose params are dense floating
        tensors are then packed per (device, dtype) into flat buffers, params and grads
        becoming views into them; ``zero_grad`` zeroes the grad buffers and keeps the
        views. The first step compiles (seconds); changing numeric hyperparameters never
        recompiles. See ``docs/engines.md``.
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
    _fused_family: str | None = None  # "adam", "sgd", "adagrad": eager steps may run torch's fused kernels (adapters.fused); "rmsprop", ...: adapters.eager_steps

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

    # -- torch.optim's state mapping -----------------------------------------------------

    @property
    def state(self) -> OptimizerState:  # type: ignore[override]
        """Per-param state as torch's: a mapping param -> entry listing the params that have
        stepped, whose tensors are the state and whose assignment loads into it
        (:mod:`adapters.state_view`)."""
        view = self.__dict__.get("_state_view")
        if view is None:
            view = self.__dict__["_state_view"] = OptimizerState(self)
        return view

    @state.setter
    def state(self, value: Any) -> None:
        # torch's base __init__ assigns an empty defaultdict (nothing to load then); a user's
        # ``opt.state = {...}`` replaces the whole state, as in torch
        if value is self.__dict__.get("_state_view") or not getattr(self, "_groups", None):
            return
        entries = {p: dict(e) for p, e in value.items()}
        self._reset_state()
        for p, entry in entries.items():
            self._assign_entry(p, entry)

    _tracks_steps = True  # list a param once it stepped; drop-ins: once their exported entry is non-empty

    def _listed(self, rt: _Group, index: int, exported: Entry) -> bool:
        return bool(exported) and (bool(rt.stepped[index]) or not self._tracks_steps)

    def _locate(self, param: torch.Tensor) -> tuple[int, int] | None:
        """(group, position) of ``param`` in ``param_groups``, None if it is not one of ours."""
        for g, group in enumerate(self.param_groups):
            for i, p in enumerate(group["params"]):
                if p is param:
                    return g, i
        return None

    def _exported_entry(self, param: torch.Tensor) -> Entry | None:
        """``param``'s state in this class's format, None if torch would not list it."""
        where = self._locate(param)
        if where is None:
            return None
        group, rt = self.param_groups[where[0]], self._groups[where[0]]
        exported = self._export_entry(rt.entries(group["params"])[where[1]])
        return exported if self._listed(rt, where[1], exported) else None

    def _exported_entries(self) -> list[tuple[torch.Tensor, Entry]]:
        """(param, exported entry) for every listed param, in param_groups order."""
        out = []
        for group, rt in zip(self.param_groups, getattr(self, "_groups", [])):
            for i, (p, entry) in enumerate(zip(group["params"], rt.entries(group["params"]))):
                exported = self._export_entry(entry)
                if self._listed(rt, i, exported):
                    out.append((p, exported))
        return out

    def _assign_entry(self, param: torch.Tensor, entry: Entry | None) -> None:
        """Load ``entry`` (this class's format; None: reset) as ``param``'s state."""
        where = self._locate(param)
        if where is None:
            raise KeyError("optimizer.state: the tensor is not a parameter of this optimizer")
        imported = None if entry is None else self._import_entry(entry)
        self._groups[where[0]].assign(self.param_groups[where[0]], where[1], imported)

    def _reset_state(self) -> None:
        for group, rt in zip(self.param_groups, self._groups):
            rt.reset(group)

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
            rt.engine.zero_grad(group["params"], set_to_none)

    # -- checkpoints ----------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """torch's format: ``{'state': {index: {name: tensor}}, 'param_groups': [...]}``,
        ``state`` holding the params listed in :attr:`state`. Runs the state_dict pre-hooks
        before and the post-hooks after (a post-hook may return a new state_dict), as torch."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        state_dict = self._build_state_dict()
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def _build_state_dict(self) -> dict[str, Any]:
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {key: v for key, v in group.items() if key != "params"}
            packed["params"] = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append(packed)
        state = {}
        for p, exported in self._exported_entries():
            state[index[id(p)]] = exported
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict (this class's or, for drop-ins, torch's). Validated in full
        before anything changes: on error the optimizer is left as it was. As torch: the
        load_state_dict pre-hooks see a shallow copy (and may return a new one), the saved
        groups are deep-copied, the post-hooks run after."""
        state_dict = state_dict.copy()
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        self._load(state_dict)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _load(self, state_dict: dict[str, Any]) -> None:
        saved_groups = copy.deepcopy(state_dict["param_groups"])
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
            saved_entries = [saved_state.get(idx, saved_state.get(str(idx))) or {} for idx in saved["params"]]
            entries = [self._import_entry(entry) for entry in saved_entries]
            plans.append((new_group, rt, entries, [bool(entry) for entry in saved_entries]))
        built = [rt.plan(new_group, entries) for new_group, rt, entries, _ in plans]  # raises before any change
        for (new_group, rt, _, stepped), plan, group in zip(plans, built, self.param_groups):
            group.clear()
            group.update(new_group)
            rt.commit(plan)
            rt.stepped = _flags(stepped)

    # -- pickling -------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """What pickling and ``copy.deepcopy`` keep: as torch, the groups and the state
        but not the hooks; here each group's state as per-param entries (the engine, its
        flat buffers and compiled step are rebuilt on unpickling) and the transform in a
        portable form (its functions are closures, see :mod:`adapters.pickling`)."""
        state = {key: v for key, v in self.__dict__.items() if key not in _NOT_PICKLED}
        state["_groups"] = [rt.snapshot(group["params"]) for group, rt in zip(self.param_groups, self._groups)]
        state["_fixed"], state["_factory"] = pickling.portable(self._fixed), pickling.portable(self._factory)
        # schedules given as hyperparameters are closures too
        state["defaults"] = _portable_callables(self.defaults)
        state["param_groups"] = [_portable_callables(group) for group in self.param_groups]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        snapshots = state.pop("_groups")
        had_flag = "differentiable" in state["defaults"]
        super().__setstate__(state)  # torch's: empty hook dicts, the step wrapper
        if not had_flag:  # torch adds it to its own defaults; ours are the factory's arguments
            self.defaults.pop("differentiable", None)
        self._groups = [_Group(self, group, entries, stepped)
                        for group, (entries, stepped) in zip(self.param_groups, snapshots)]


def _portable_callables(values: dict[str, Any]) -> dict[str, Any]:
    return {key: pickling.portable(v) if callable(v) else v for key, v in values.items()}


# torch's __getstate__ keeps neither the hooks nor anything but groups, defaults and state
_NOT_PICKLED = frozenset({"_optimizer_step_pre_hooks", "_optimizer_step_post_hooks",
                          "_optimizer_state_dict_pre_hooks", "_optimizer_state_dict_post_hooks",
                          "_optimizer_load_state_dict_pre_hooks", "_optimizer_load_state_dict_post_hooks",
                          "_state_view", "_groups"})
