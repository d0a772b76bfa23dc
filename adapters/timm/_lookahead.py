"""timm's ``Lookahead`` optimizer wrapper (``timm/optim/lookahead.py``), with the slow
weights stepped through ``functional_optim.kernels``. timm itself is never imported."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch.optim.optimizer import Optimizer

from functional_optim import kernels as k

__all__ = ["Lookahead"]

_GROUP_KEYS = ('lookahead_alpha', 'lookahead_k', 'lookahead_step')
_SLOW = 'lookahead_slow_buff'


class Lookahead(Optimizer):
    """Lookahead around any ``torch.optim.Optimizer`` (ours or torch's), as
    ``timm.optim.Lookahead``: k steps forward, one step back.

    ``step`` runs the base optimizer's step, then in each param group counts
    ``group['lookahead_step'] += 1``; when it is a multiple of ``group['lookahead_k']``
    every param of the group with a gradient is synced (``update_slow``)::

        slow = copy of p            (only at a param's first sync: that sync leaves p as is)
        slow = slow + alpha * (p - slow)
        p    = slow

    with ``alpha = group['lookahead_alpha']``. timm's layout throughout: the wrapper
    shares the base's ``param_groups`` and ``defaults`` and adds ``lookahead_alpha``,
    ``lookahead_k`` and ``lookahead_step`` to both (so schedulers and ``add_param_group``
    see them); ``state_dict()`` is the base optimizer's with each synced param's slow
    weights under ``'lookahead_slow_buff'`` in its state, and ``load_state_dict`` takes
    that format (timm's checkpoints load here and back; a base checkpoint without
    lookahead keys gets the defaults).

    Differences from timm: the slow weights are held by the wrapper (the base's own
    ``state_dict()`` does not list them; the wrapper's does), ``state`` is the merged
    per-param view rather than an unused empty dict, ``zero_grad`` and ``add_param_group``
    are the base optimizer's, and hooks registered on the wrapper fire (step hooks around
    the whole step, state_dict hooks around ``state_dict``/``load_state_dict``).

    Args:
      base_optimizer: the optimizer making the fast steps.
      alpha: the slow step size, in [0, 1]. Default 0.5.
      k: fast steps between syncs, >= 1. Default 6.

    References:
      Zhang, Lucas, Hinton, Ba. Lookahead Optimizer: k steps forward, 1 step back.
      NeurIPS 2019, arXiv:1907.08610.

    Example:
      >>> import torch
      >>> from adapters import SGD
      >>> from adapters.timm import Lookahead
      >>> w = torch.nn.Parameter(torch.zeros(1))
      >>> opt = Lookahead(SGD([w], lr=1.0), alpha=0.5, k=2)
      >>> for _ in range(4):  # slow starts at the 1st sync (p = 2); 2nd sync: 2 + 0.5 * (4 - 2)
      ...     w.grad = -torch.ones(1)
      ...     opt.step()
      >>> w.detach(), opt.param_groups[0]['lookahead_step']
      (tensor([3.]), 4)
    """

    def __init__(self, base_optimizer: Optimizer, alpha: float = 0.5, k: int = 6):
        # Optimizer.__init__ is not called (as in timm): the groups are the base optimizer's
        self._optimizer_step_pre_hooks: dict[int, Callable] = OrderedDict()
        self._optimizer_step_post_hooks: dict[int, Callable] = OrderedDict()
        self._optimizer_state_dict_pre_hooks: dict[int, Callable] = OrderedDict()
        self._optimizer_state_dict_post_hooks: dict[int, Callable] = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: dict[int, Callable] = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: dict[int, Callable] = OrderedDict()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f'Invalid slow update rate: {alpha} (alpha must be in [0, 1])')
        if not 1 <= k:
            raise ValueError(f'Invalid lookahead steps: {k} (k must be >= 1)')
        if not isinstance(base_optimizer, Optimizer):
            raise TypeError("base_optimizer must be a torch.optim.Optimizer, got "
                            f"{type(base_optimizer).__name__}")
        defaults = dict(lookahead_alpha=alpha, lookahead_k=k, lookahead_step=0)
        self._base_optimizer = base_optimizer
        self._slow: dict[torch.Tensor, torch.Tensor] = {}  # param -> its slow weights (after its first sync)
        self.param_groups = base_optimizer.param_groups
        self.defaults = base_optimizer.defaults
        self.defaults.update(defaults)
        for name, default in defaults.items():
            for group in self._base_optimizer.param_groups:
                group.setdefault(name, default)
        self._patch_step_function()  # step hooks registered on the wrapper fire

    @property
    def base_optimizer(self) -> Optimizer:
        """The wrapped optimizer."""
        return self._base_optimizer

    @property
    def is_second_order(self) -> bool:
        """The base optimizer's ``is_second_order`` (False if it has none)."""
        return getattr(self._base_optimizer, 'is_second_order', False)

    @property
    def state(self) -> dict[torch.Tensor, dict[str, Any]]:  # type: ignore[override]
        """Per-param state: the base optimizer's, plus ``'lookahead_slow_buff'`` once synced
        (a view built on access)."""
        base = self._base_optimizer.state
        out = {p: dict(entry) for p, entry in base.items()}
        for p, slow in self._slow.items():
            out.setdefault(p, {})[_SLOW] = slow
        return out

    @state.setter
    def state(self, value: Any) -> None:  # the state lives in the base optimizer and in _slow
        pass

    @torch.no_grad()
    def update_slow(self, group: dict[str, Any]) -> None:
        """Sync the params of ``group`` that have a gradient with their slow weights."""
        fast = [p for p in group["params"] if p.grad is not None]
        if not fast:
            return
        for p in fast:
            if p not in self._slow:
                self._slow[p] = k.copy([torch.empty_like(p)], [p])[0]
        slow = [self._slow[p] for p in fast]
        k.add(slow, k.sub(fast, slow), alpha=group['lookahead_alpha'], donate=True)
        k.copy(fast, slow)

    def sync_lookahead(self) -> None:
        """Sync every group now (e.g. before evaluating), whatever its step count."""
        for group in self._base_optimizer.param_groups:
            self.update_slow(group)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """The base optimizer's step, then a sync of the groups whose step count reached a
        multiple of ``lookahead_k``; returns the closure's loss."""
        loss = self._base_optimizer.step(closure)
        for group in self._base_optimizer.param_groups:
            group['lookahead_step'] += 1
            if group['lookahead_step'] % group['lookahead_k'] == 0:
                self.update_slow(group)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """The base optimizer's ``zero_grad``."""
        self._base_optimizer.zero_grad(set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the base optimizer, with the lookahead defaults."""
        self._base_optimizer.add_param_group(param_group)
        for name in _GROUP_KEYS:
            self._base_optimizer.param_groups[-1].setdefault(name, self.defaults[name])

    def _param_order(self) -> list[torch.Tensor]:
        # the params in state_dict index order (torch numbers them by first appearance)
        seen: dict[int, torch.Tensor] = {}
        for group in self._base_optimizer.param_groups:
            for p in group["params"]:
                seen.setdefault(id(p), p)
        return list(seen.values())

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state_dict with each synced param's slow weights under
        ``'lookahead_slow_buff'`` (timm's layout)."""
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        sd = self._base_optimizer.state_dict()
        state = dict(sd["state"])
        for index, p in enumerate(self._param_order()):
            if p in self._slow:
                state[index] = {**state.get(index, {}), _SLOW: self._slow[p]}
        sd = {**sd, "state": state}
        for hook in self._optimizer_state_dict_post_hooks.values():
            result = hook(self, sd)
            if result is not None:
                sd = result
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict of this wrapper (or timm's ``Lookahead``, or of a base optimizer
        without lookahead): the slow weights are taken out, the rest goes to the base."""
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        base_state, slow_by_index = {}, {}
        for index, entry in state_dict["state"].items():
            if _SLOW in entry:
                slow_by_index[int(index)] = entry[_SLOW]
                entry = {key: v for key, v in entry.items() if key != _SLOW}
            base_state[index] = entry
        params = self._param_order()
        slow = {}
        for index, value in slow_by_index.items():
            if not 0 <= index < len(params):
                raise ValueError(f"state_dict has lookahead_slow_buff for param {index}, but the optimizer "
                                 f"has {len(params)} params")
            p = params[index]
            if tuple(value.shape) != tuple(p.shape):
                raise ValueError(f"lookahead_slow_buff of param {index} has shape {tuple(value.shape)}, "
                                 f"the param has {tuple(p.shape)}")
            slow[p] = value.detach().to(dtype=p.dtype, device=p.device, copy=True)
        self._base_optimizer.load_state_dict({**state_dict, "state": base_state})  # validates the rest
        self._slow = slow
        self.param_groups = self._base_optimizer.param_groups
        for name in _GROUP_KEYS:
            for group in self.param_groups:
                group.setdefault(name, self.defaults[name])
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._patch_step_function()

    def __repr__(self) -> str:
        return f"Lookahead({self._base_optimizer!r})"
