"""``inject_hyperparams``: hyperparameters held in state, readable and writable at run time.

The wrapped factory is called again at every update with the hyperparameters taken from
state (as 0-d tensors), so a user can log them (``fo.tree.get(state, "lr")``), change
them between steps (``state.hyperparams["lr"] = torch.tensor(3e-4)``), and a compiled
step never recompiles when they change: they are graph inputs, not constants.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable
from numbers import Integral, Real
from typing import Any, NamedTuple

import torch

from .. import steps
from ..base import GradientTransformation, declare, needs
from ..hyperparams import is_schedule, tensors_unread, value_at

__all__ = ["InjectHyperparamsState", "inject_hyperparams"]


class InjectHyperparamsState(NamedTuple):
    """State of a transform built by :func:`inject_hyperparams`."""

    count: torch.Tensor  # 0-d int32: updates applied so far (the schedules' argument)
    hyperparams: dict  # {name: 0-d tensor (hyperparam_dtype), or a tuple of them for a tuple
    #                    argument such as betas}: the values the last update used (before the
    #                    first update: the initial ones); writable for non-scheduled names
    inner_state: Any  # state of the transform built by the inner factory


class _Number:
    """A numeric hyperparameter: how it is stored in state and what the factory receives."""

    def __init__(self, name: str, value: Any, dtype: torch.dtype):
        self.name, self.value, self.dtype = name, value, dtype
        self.rounded = self.delta = None
        if not isinstance(value, torch.Tensor):
            rounded = torch.tensor(float(value), dtype=dtype).item()
            if not math.isfinite(rounded):
                raise ValueError(f"hyperparameter {name}={value} does not fit in hyperparam_dtype "
                                 f"{dtype}; pass hyperparam_dtype=torch.float64")
            # the Python number the factory receives while the stored value is unchanged
            if rounded != float(value):
                self.rounded, self.delta = rounded, float(value) - rounded

    def stored(self, device: torch.device | None) -> torch.Tensor:
        if isinstance(self.value, torch.Tensor):
            out = self.value.to(device=device if device is not None else self.value.device,
                                dtype=self.dtype).reshape(())
            return out.clone() if out is self.value else out
        return torch.tensor(float(self.value), dtype=self.dtype, device=device)

    def used(self, stored: Any, device: torch.device | None) -> torch.Tensor:
        """The value the factory receives: ``stored`` in the compute dtype; while it still
        holds the initial Python number's rounding, exactly that number (see below)."""
        stored = _as_tensor(stored, self.dtype, device, self.name)
        compute = _compute_dtype(stored.device)
        out = stored.to(compute)
        if self.delta is not None and compute == torch.float64:
            # stored + (number - rounding) is exactly the number (both steps are exact);
            # the gradient with respect to ``stored`` is 1 whichever branch is taken
            out = out + (stored == self.rounded).to(compute) * self.delta
        return out


def _compute_dtype(device: torch.device) -> torch.dtype:
    # float64 carries a Python float's every bit (float32 where the device has no float64)
    return torch.float32 if device.type == "mps" else torch.float64


def _as_tensor(value: Any, dtype: torch.dtype, device: torch.device | None, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"hyperparameter {name!r} in state must be a 0-d tensor, got shape "
                             f"{tuple(value.shape)}")
        return value.reshape(())
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"hyperparameter {name!r} in state must be a 0-d tensor or a number, got "
                        f"{type(value).__name__}")
    return torch.tensor(float(value), dtype=dtype, device=device)


def _is_float_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, Integral)


def _is_scalar_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point()


def _kind(value: Any) -> str:
    """'number', 'tuple', 'schedule' or 'static' (see inject_hyperparams)."""
    if _is_scalar_tensor(value) or (_is_float_number(value) and value != 0):
        return "number"
    if isinstance(value, (tuple, list)) and value and all(
            _is_float_number(v) or _is_scalar_tensor(v) for v in value):
        return "tuple"
    if is_schedule(value) and not isinstance(value, type):
        return "schedule"
    return "static"


def inject_hyperparams(inner_factory: Callable[..., GradientTransformation],
                       static_args: str | Iterable[str] = (),
                       hyperparam_dtype: torch.dtype | None = None
                       ) -> Callable[..., GradientTransformation]:
    """Wrap a transform factory so its hyperparameters live in the state.

    ``inject_hyperparams(fo.adam)(lr=1e-3)`` is Adam whose state is
    ``InjectHyperparamsState(count, hyperparams, inner_state)``: ``hyperparams`` holds
    ``lr``, ``betas`` and ``eps`` as 0-d tensors. At every update the factory is called
    again with the values from state, then its transform updates ``inner_state``. So:

    * read: ``state.hyperparams["lr"]`` or ``fo.tree.get(state, "lr")`` (what the last
      update used: a schedule's value at that step);
    * write: ``state.hyperparams["lr"] = torch.tensor(3e-4)`` or
      ``state = fo.tree.set(state, "lr", torch.tensor(3e-4))`` takes effect at the next
      update (for hyperparameters that are not schedules);
    * a compiled step reads them as tensor inputs: changing one never recompiles.

    Which arguments are injected (after filling in the factory's defaults, as optax):

    * numbers (Python floats) and one-element float tensors: stored as 0-d tensors;
    * tuples or lists of those (``betas=(0.9, 0.999)``): stored as a tuple of 0-d tensors;
    * callables: schedules ``count -> value``, evaluated at the wrapper's count (0 at the
      first update, as optax) before each update; the value is stored for logging;
    * static, passed unchanged: names in ``static_args``, bools, ints (counts and sizes,
      as the torch.optim adapter treats them: write ``lr=1.0``, not ``lr=1``), strings, None, dtypes, other objects, and
      **Python floats equal to zero**: torch-style factories leave out the stage a zero
      switches off (``fo.sgd``'s momentum and weight decay), and injecting the zero
      would add that stage and its state. Pass ``torch.tensor(0.0)`` to inject a zero.
      Put a callable that is not a schedule (a mask function) in ``static_args``.

    Dtype. Hyperparameters are stored in float32 whatever the params' dtype
    (``hyperparam_dtype=None``). optax's default, the params' widest dtype, rounds them
    to bfloat16 for bf16 params (0.999 becomes 1.0, optax #1414). The factory receives
    float64 0-d tensors: while a stored value is unchanged it receives exactly the Python
    number given (the float32 rounding plus the exact difference), so the injected
    optimizer is **bit-identical** to the plain one (optax #1532), for float64 params
    too (tested over 50 steps of sgd, adam, adamw, with ``torch.equal``). Gradients with
    respect to a stored value flow as usual (hypergradients). A value you write is used
    as written: pass ``hyperparam_dtype=torch.float64`` to keep written values in double
    precision (e.g. for float64 params). For bfloat16/float16 params the result may
    differ in the last bit: torch's own reduced-precision kernels round a Python scalar
    differently in their vectorised body and their tail (``torch.add(..., alpha=)``).

    Every update re-creates the inner transform: the factory's validation does not read
    the tensors then (no host sync); values are validated once, when the factory is
    first called with the given arguments.

    Args:
      inner_factory: a function returning a GradientTransformation from keyword
        hyperparameters (an alias such as ``fo.adam`` or a transform such as ``fo.scale``).
      static_args: names of arguments that must stay static (a name or an iterable).
        Default ().
      hyperparam_dtype: floating dtype of the stored hyperparameters. Default None
        (float32).

    Returns:
      A factory with the signature of ``inner_factory`` returning the wrapped transform.

    Example:
      >>> import torch, functional_optim as fo
      >>> from functional_optim.wrappers.injection import inject_hyperparams
      >>> opt = inject_hyperparams(fo.sgd)(lr=0.1)
      >>> params = {"w": torch.ones(2)}
      >>> state = opt.init(params)
      >>> state.hyperparams["lr"]
      tensor(0.1000)
      >>> state.hyperparams["lr"] = torch.tensor(0.5)
      >>> updates, state = opt.update({"w": torch.ones(2)}, state, params)
      >>> updates["w"]
      tensor([-0.5000, -0.5000])
    """
    if not callable(inner_factory):
        raise TypeError(f"inner_factory must be callable, got {type(inner_factory).__name__}")
    static = {static_args} if isinstance(static_args, str) else set(static_args)
    try:
        signature = inspect.signature(inner_factory)
    except (TypeError, ValueError) as err:
        raise TypeError(f"cannot read the signature of inner_factory {inner_factory!r}") from err
    kinds = {p.kind for p in signature.parameters.values()}
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        raise TypeError("inner_factory must take its hyperparameters by name, not as *args")
    var_keyword = inspect.Parameter.VAR_KEYWORD in kinds
    unknown = sorted(s for s in static if s not in signature.parameters)
    if unknown and not var_keyword:
        raise ValueError(f"static_args {unknown} are not arguments of {inner_factory!r}")
    if hyperparam_dtype is None:
        hyperparam_dtype = torch.float32
    if not isinstance(hyperparam_dtype, torch.dtype) or not hyperparam_dtype.is_floating_point:
        raise TypeError(f"hyperparam_dtype must be a floating torch.dtype or None, got {hyperparam_dtype!r}")

    def wrapped_factory(*args: Any, **kwargs: Any) -> GradientTransformation:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                arguments.update(value)
            else:
                arguments[name] = value
        # one-element tensors are stored 0-d (see _as_tensor): the factory sees them so too
        arguments = {name: v.reshape(()) if isinstance(v, torch.Tensor) and v.numel() == 1 else v
                     for name, v in arguments.items()}
        # the factory validates the given values once, here (and builds the probe)
        probe = inner_factory(**arguments)
        if not isinstance(probe, GradientTransformation):
            raise TypeError(f"inner_factory must return a GradientTransformation, got {type(probe).__name__}")

        statics, numbers, tuples, schedules = {}, {}, {}, {}
        for name, value in arguments.items():
            kind = "static" if name in static else _kind(value)
            if kind == "number":
                numbers[name] = _Number(name, value, hyperparam_dtype)
            elif kind == "tuple":
                tuples[name] = (type(value), [_Number(f"{name}[{i}]", v, hyperparam_dtype)
                                              for i, v in enumerate(value)])
            elif kind == "schedule":
                schedules[name] = value
            else:
                statics[name] = value

        names = set(numbers) | set(tuples) | set(schedules)

        def build(used: dict[str, Any]) -> GradientTransformation:
            if torch.compiler.is_compiling():  # nothing is read while tracing anyway
                return inner_factory(**statics, **used)
            with tensors_unread():
                return inner_factory(**statics, **used)

        def schedule_values(count: torch.Tensor) -> tuple[dict, dict]:
            stored, used = {}, {}
            for name, fn in schedules.items():
                value = _as_tensor(value_at(fn, count), hyperparam_dtype, count.device, name)
                used[name] = value.to(_compute_dtype(value.device))
                stored[name] = value.to(hyperparam_dtype)
            return stored, used

        def used_values(hyperparams: dict, device: torch.device | None) -> dict[str, Any]:
            used = {}
            for name, spec in numbers.items():
                used[name] = spec.used(_entry(hyperparams, name), device)
            for name, (kind, specs) in tuples.items():
                entry = _entry(hyperparams, name)
                if not isinstance(entry, (tuple, list)) or len(entry) != len(specs):
                    raise ValueError(f"hyperparameter {name!r} in state must be a tuple of "
                                     f"{len(specs)} values, got {entry!r}")
                used[name] = kind(spec.used(v, device) for spec, v in zip(specs, entry))
            return used

        def init_fn(params):
            device = steps.first_device(params)
            count = steps.zero_count(device)
            hyperparams: dict[str, Any] = {name: spec.stored(device) for name, spec in numbers.items()}
            for name, (_, specs) in tuples.items():
                hyperparams[name] = tuple(spec.stored(device) for spec in specs)
            stored, scheduled = schedule_values(count)
            hyperparams.update(stored)
            used = used_values(hyperparams, device)
            used.update(scheduled)
            inner_state = build(used).init(params)
            return InjectHyperparamsState(count=count, hyperparams=hyperparams, inner_state=inner_state)

        def update_fn(updates, state, params=None, **extra):
            if not isinstance(state, InjectHyperparamsState):
                raise ValueError("state must be an InjectHyperparamsState (made by this transform's "
                                 f"init), got {type(state).__name__}")
            unknown = sorted(set(state.hyperparams) - names)
            if unknown:  # e.g. a static argument written into state: it would be ignored
                raise ValueError(f"state.hyperparams has {unknown}, which are not injected hyperparameters "
                                 f"of this transform (injected: {sorted(names)}); static arguments "
                                 "(ints, bools, Python zeros, static_args) cannot be changed in state")
            hyperparams = dict(state.hyperparams)
            stored, scheduled = schedule_values(state.count)
            hyperparams.update(stored)
            used = used_values(hyperparams, state.count.device)
            used.update(scheduled)
            updates, inner_state = build(used).update(updates, state.inner_state, params, **extra)
            return updates, InjectHyperparamsState(count=state.count + 1, hyperparams=hyperparams,
                                                   inner_state=inner_state)

        tx = GradientTransformation(init_fn, update_fn)
        return declare(tx, needs(probe))

    try:
        wrapped_factory.__signature__ = signature  # type: ignore[attr-defined]
        wrapped_factory.__name__ = getattr(inner_factory, "__name__", "wrapped_factory")
        wrapped_factory.__doc__ = (f"{wrapped_factory.__name__} with its hyperparameters in state "
                                   "(see inject_hyperparams).")
    except (AttributeError, TypeError):  # pragma: no cover - exotic callables
        pass
    return wrapped_factory


def _entry(hyperparams: dict, name: str) -> Any:
    if name not in hyperparams:
        raise ValueError(f"hyperparameter {name!r} is missing from state.hyperparams "
                         f"(has {sorted(hyperparams)})")
    return hyperparams[name]
