"""``optimizer.state`` as torch.optim's: a mapping from param to its per-param state.

torch.optim keeps ``state`` as a ``defaultdict(dict)`` that its steps fill in place; tools
read it (``torch.distributed.checkpoint`` checks whether it is empty before initialising)
and write it (``ZeroRedundancyOptimizer.load_state_dict`` assigns ``opt.state[p] = {...}``).
Here the state lives in each group's functional state, so the mapping is a view:

* reading gives the optimizer's exported entries (the drop-ins: torch's keys), listing only
  the params torch would list (those that have stepped); the tensors are the state itself
  (per-param tensors, or views into a flat engine's buffers), so an in-place edit such as
  ``opt.state[p]['exp_avg'].copy_(t)`` changes the state;
* writing (``opt.state[p] = entry``, ``opt.state[p][key] = value``, ``del``, ``clear``)
  goes through the optimizer's plan-then-commit load of that param's group, so a bad value
  raises before anything changes.

A value that torch keeps in another form (the drop-ins' float ``step``, held here as an
int32 counter) is a converted copy: assign it rather than edit it in place.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .optimizer import FunctionalOptimizer

class ParamState(MutableMapping):
    """One param's state in ``optimizer.state[p]``: a live view of the exported entry.

    Reads show the current state (also after later steps); writes load the changed entry
    into the optimizer. An empty view (a param that has not stepped) is what torch's
    ``defaultdict`` gives for a missing param; assigning into it creates the param's state.

    Example:
      >>> import torch
      >>> from adapters import SGD
      >>> w = torch.nn.Parameter(torch.zeros(2))
      >>> opt = SGD([w], lr=0.1, momentum=0.9)
      >>> w.grad = torch.ones(2)
      >>> opt.step()
      >>> opt.state[w]["momentum_buffer"].mul_(2)
      tensor([2., 2.])
      >>> opt.step()
      >>> opt.state[w]["momentum_buffer"]
      tensor([2.8000, 2.8000])
    """

    def __init__(self, optimizer: FunctionalOptimizer, param: torch.Tensor):
        self._optimizer, self._param = optimizer, param

    def _current(self) -> dict[str, Any]:
        return self._optimizer._exported_entry(self._param) or {}

    def __getitem__(self, key: str) -> Any:
        return self._current()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._optimizer._assign_entry(self._param, {**self._current(), key: value})

    def __delitem__(self, key: str) -> None:
        entry = self._current()
        del entry[key]  # KeyError as a dict's
        self._optimizer._assign_entry(self._param, entry)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._current()))  # a snapshot: writing while iterating is fine

    def __len__(self) -> int:
        return len(self._current())

    def items(self):  # one read of the state, not one per key
        return self._current().items()

    def values(self):
        return self._current().values()

    def copy(self) -> dict[str, Any]:
        """A plain dict of the current entry (the tensors are the state's, as ``dict.copy``)."""
        return self._current()

    def __repr__(self) -> str:
        return repr(self._current())


class OptimizerState(MutableMapping):
    """``optimizer.state``: param -> :class:`ParamState`, listing the params that have state.

    ``len``, iteration, ``in``, ``get`` and ``items`` see the listed params only (torch's
    state is empty before the first step); ``state[p]`` on a param of the optimizer that
    is not listed returns an empty, writable entry (torch's ``defaultdict``); ``del
    state[p]`` resets the param's state, so its next step starts afresh, as in torch.

    Example:
      >>> import torch
      >>> from adapters import Adam
      >>> w = torch.nn.Parameter(torch.zeros(2))
      >>> opt = Adam([w], lr=0.1)
      >>> len(opt.state), w in opt.state
      (0, False)
      >>> w.grad = torch.ones(2)
      >>> opt.step()
      >>> sorted(opt.state[w])
      ['exp_avg', 'exp_avg_sq', 'step']
    """

    def __init__(self, optimizer: FunctionalOptimizer):
        self._optimizer = optimizer

    def _listed(self) -> list[tuple[torch.Tensor, dict[str, Any]]]:
        return self._optimizer._exported_entries()

    def __getitem__(self, param: torch.Tensor) -> ParamState:
        if not isinstance(param, torch.Tensor) or self._optimizer._locate(param) is None:
            raise KeyError(param)
        return ParamState(self._optimizer, param)

    def __setitem__(self, param: torch.Tensor, entry: Mapping[str, Any]) -> None:
        if not isinstance(entry, Mapping):
            raise TypeError(f"optimizer.state[param] must be a mapping of state names to values, "
                            f"got {type(entry).__name__}")
        self._optimizer._assign_entry(param, dict(entry))

    def __delitem__(self, param: torch.Tensor) -> None:
        if param not in self:
            raise KeyError(param)
        self._optimizer._assign_entry(param, None)

    def __contains__(self, param: object) -> bool:
        return isinstance(param, torch.Tensor) and self._optimizer._exported_entry(param) is not None

    def get(self, param: torch.Tensor, default: Any = None) -> Any:
        return self[param] if param in self else default

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter([p for p, _ in self._listed()])

    def __len__(self) -> int:
        return len(self._listed())

    def items(self):
        return [(p, ParamState(self._optimizer, p)) for p, _ in self._listed()]

    def values(self):
        return [ParamState(self._optimizer, p) for p, _ in self._listed()]

    def clear(self) -> None:
        """Reset every param's state (each next step starts afresh)."""
        self._optimizer._reset_state()

    def __repr__(self) -> str:
        return repr({p: entry for p, entry in self._listed()})
