"""Pickling functional transforms, whose functions are closures made by factories.

``pickle`` stores a function by its importable name, which a closure such as the
``update_fn`` that ``fo.adamw(1e-3)`` returns does not have. Here such a function is
stored by reference to its code (the module and name of the enclosing factory, and the
code object's place inside it: no bytecode is stored, so a pickle loads into the same
library version as torch's checkpoints of modules do) together with its closure values,
defaults and attributes, which are pickled in turn. An optimizer's ``__getstate__``
wraps its transform with :func:`portable`; any pickler then stores it, and unpickling
(or ``copy.deepcopy``) gives back a working transform.
"""

from __future__ import annotations

import importlib
import inspect
import io
import pickle
import sys
import types
from typing import Any


class _EmptyCell:
    """Marks a closure cell that had no value when pickled."""


def dumps(obj: Any) -> bytes:
    """``obj`` pickled, closures included (see the module docstring).

    Example:
      >>> import torch, functional_optim as fo
      >>> from adapters import pickling
      >>> tx = pickling.loads(pickling.dumps(fo.sgd(0.1)))
      >>> tx.update([torch.ones(2)], tx.init([torch.zeros(2)]))[0]
      [tensor([-0.1000, -0.1000])]
    """
    buffer = io.BytesIO()
    _ClosurePickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


def loads(data: bytes) -> Any:
    """The object :func:`dumps` pickled into ``data`` (plain ``pickle.loads``: the
    functions unpickle through this module's importable helpers).

    Example:
      >>> import functional_optim as fo
      >>> from adapters import pickling
      >>> tx = pickling.loads(pickling.dumps(fo.chain(fo.clip_by_global_norm(1.0), fo.adamw(1e-3))))
      >>> fo.needs(tx).name
      'GLOBAL'
    """
    return pickle.loads(data)


class Portable:
    """``value`` in a form any pickler stores (and ``copy.deepcopy`` copies); it unpickles
    as the value itself, not as a ``Portable``.

    Example:
      >>> import copy, pickle, functional_optim as fo
      >>> from adapters.pickling import Portable
      >>> tx = pickle.loads(pickle.dumps(Portable(fo.adamw(1e-3))))
      >>> type(tx).__name__
      'GradientTransformation'
    """

    def __init__(self, value: Any):
        self.data = dumps(value)

    def __reduce__(self) -> tuple:
        return loads, (self.data,)


def portable(value: Any) -> Any:
    """``value`` wrapped in :class:`Portable` if it may be or hold a closure (a callable
    other than a class, or a tuple such as a ``GradientTransformation``), else ``value``.

    Example:
      >>> import functional_optim as fo
      >>> from adapters.pickling import portable
      >>> type(portable(fo.cosine_decay_schedule(0.1, 10))).__name__, portable(0.1)
      ('Portable', 0.1)
    """
    if isinstance(value, tuple) or callable(value) and not isinstance(value, type):
        return Portable(value)
    return value


class _ClosurePickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is types.FunctionType and not _importable(obj):
            return _reduce_function(obj)
        if type(obj) is types.ModuleType:
            return importlib.import_module, (obj.__name__,)
        return NotImplemented


def _importable(fn: types.FunctionType) -> bool:
    """Whether plain pickle finds ``fn`` again by its module and qualified name."""
    target: Any = sys.modules.get(fn.__module__)
    for part in fn.__qualname__.split("."):
        target = getattr(target, part, None)
    return target is fn


def _reduce_function(fn: types.FunctionType) -> tuple:
    root, ordinal = _locate_code(fn)  # root: the enclosing importable function's dotted name
    cells = [] if fn.__closure__ is None else [_cell_value(c) for c in fn.__closure__]
    state = (fn.__defaults__, fn.__kwdefaults__, cells, dict(fn.__dict__))
    return (_make_function, (fn.__module__, fn.__qualname__, root, fn.__code__.co_name, ordinal, len(cells)),
            state, None, None, _set_function_state)


def _cell_value(cell: types.CellType) -> Any:
    try:
        return cell.cell_contents
    except ValueError:
        return _EmptyCell


def _root_code(module: str, root: str) -> types.CodeType:
    """The code of the importable function ``module.root`` (a dotted name)."""
    target: Any = importlib.import_module(module)
    parts = root.split(".")
    for part in parts:
        target = getattr(target, part, None)
    target = inspect.unwrap(target) if callable(target) else target
    code = getattr(target, "__code__", None)
    if not isinstance(code, types.CodeType):
        raise pickle.PicklingError(f"cannot pickle a function defined in {root!r}: that function "
                                   f"is not importable from module {module!r}")
    return code


def _nested(code: types.CodeType, name: str) -> list[types.CodeType]:
    """The code objects named ``name`` nested (at any depth) in ``code``, depth first."""
    out = []
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            if const.co_name == name:
                out.append(const)
            out.extend(_nested(const, name))
    return out


def _locate_code(fn: types.FunctionType) -> tuple[str, int]:
    if ".<locals>." not in fn.__qualname__:
        raise pickle.PicklingError(f"cannot pickle function {fn.__module__}.{fn.__qualname__}: "
                                   "it is not importable by that name")
    root = fn.__qualname__.split(".<locals>.")[0]
    matches = _nested(_root_code(fn.__module__, root), fn.__code__.co_name)
    for ordinal, code in enumerate(matches):
        if code is fn.__code__:
            return root, ordinal
    raise pickle.PicklingError(f"cannot pickle function {fn.__module__}.{fn.__qualname__}: its code "
                               "is not the code the enclosing function makes (was it rebuilt?)")


def _make_function(module: str, qualname: str, root: str, name: str, ordinal: int, ncells: int
                   ) -> types.FunctionType:
    matches = _nested(_root_code(module, root), name)
    if ordinal >= len(matches) or len(matches[ordinal].co_freevars) != ncells:
        raise pickle.UnpicklingError(f"cannot unpickle function {module}.{qualname}: the code of "
                                     f"{module}.{root} has changed since it was pickled")
    code = matches[ordinal]
    closure = tuple(types.CellType() for _ in range(ncells)) if ncells else None
    fn = types.FunctionType(code, importlib.import_module(module).__dict__, name, None, closure)
    fn.__qualname__ = qualname
    return fn


def _set_function_state(fn: types.FunctionType, state: tuple) -> None:
    # filled in after the function exists, so closures that refer to each other unpickle
    defaults, kwdefaults, cells, attributes = state
    fn.__defaults__, fn.__kwdefaults__ = defaults, kwdefaults
    for cell, value in zip(fn.__closure__ or (), cells):
        if value is not _EmptyCell:
            cell.cell_contents = value
    fn.__dict__.update(attributes)
