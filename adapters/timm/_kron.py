"""``timm.optim.Kron`` (PSGD) on the functional engine (``fo.timm.kron``).

No ``from __future__ import annotations`` here: the signature prints exactly as timm's.
"""

import random
from typing import Any, Callable, Dict, Optional, Union

import torch
from torch.optim.optimizer import ParamsT

import functional_optim as fo
from functional_optim.transforms.kron import ScaleByKronState, python_rng_state, python_rng_words

from ..optimizer import Entry
from ..torch_optim import _TorchCompatible
from ._lamb import max_lr_snapshot

__all__ = ["Kron"]

_S = "ScaleByKronState."
_SEED = 1337  # timm's random.Random(1337)


def _group_kron(deterministic: bool, kwargs: Dict[str, Any]) -> fo.GradientTransformation:
    return fo.timm.kron(**kwargs, deterministic=deterministic, rng_seed=_SEED)


# two factories, so that a param group's keys are exactly timm's (``deterministic`` is an
# attribute of timm's optimizer, not a group key) and the factory pickles by name
def _kron_group(lr=0.001, momentum=0.9, weight_decay=0.0, preconditioner_update_probability=None,
                max_size_triangular=2048, min_ndim_triangular=2, memory_save_mode=None,
                momentum_into_precond_update=True, precond_lr=0.1, precond_init_scale=1.0, mu_dtype=None,
                precond_dtype=None, decoupled_decay=False, corrected_weight_decay=False, max_lr_snapshot=None,
                flatten=False, flatten_start_dim=2, flatten_end_dim=-1, stochastic_weight_decay=False):
    """``fo.timm.kron`` from a param group in timm's keys (probes from torch's generator)."""
    return _group_kron(False, dict(locals()))


def _kron_group_deterministic(lr=0.001, momentum=0.9, weight_decay=0.0, preconditioner_update_probability=None,
                              max_size_triangular=2048, min_ndim_triangular=2, memory_save_mode=None,
                              momentum_into_precond_update=True, precond_lr=0.1, precond_init_scale=1.0,
                              mu_dtype=None, precond_dtype=None, decoupled_decay=False,
                              corrected_weight_decay=False, max_lr_snapshot=None, flatten=False,
                              flatten_start_dim=2, flatten_end_dim=-1, stochastic_weight_decay=False):
    """``fo.timm.kron`` from a param group in timm's keys (probes seeded from the Python generator)."""
    return _group_kron(True, dict(locals()))


def _kron_state(state: Any) -> Optional[ScaleByKronState]:
    """The :class:`ScaleByKronState` inside a group's state, None if there is none."""
    if isinstance(state, ScaleByKronState):
        return state
    if isinstance(state, (tuple, list)):
        for child in state:
            found = _kron_state(child)
            if found is not None:
                return found
    return None


def _global_rng_state(device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    return torch.get_rng_state()


def _set_global_rng_state(device: torch.device, value: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(value, device)
    else:
        torch.set_rng_state(value)


class Kron(_TorchCompatible):
    """``timm.optim.Kron`` (PSGD with a Kronecker-factored preconditioner) on the functional
    engine (``fo.timm.kron``), with timm's signature, param-group keys and state: per param
    ``step`` and ``update_counter`` (Python ints), ``momentum_buffer`` and ``Q`` (the list
    of factors), and the Python generator's state as ``state_dict()['rng_state']``, so
    checkpoints load both ways.

    Args:
      params: an iterable of tensors or of param-group dicts.
      lr: learning rate >= 0. Default 0.001.
      momentum: in [0, 1). Default 0.9.
      weight_decay: >= 0. Default 0.
      preconditioner_update_probability: a probability, a callable of the step, or None
        (default: timm's annealing schedule).
      max_size_triangular: larger dims get diagonal factors. Default 2048.
      min_ndim_triangular: tensors with fewer dims get diagonal factors. Default 2.
      memory_save_mode: None (default), ``'one_diag'``, ``'smart_one_diag'``, ``'all_diag'``.
      momentum_into_precond_update: fit the preconditioner on the momentum. Default True.
      precond_lr: the preconditioner's step size. Default 0.1.
      precond_init_scale: initial scale of the preconditioner. Default 1.
      mu_dtype: momentum dtype (None: the param's).
      precond_dtype: preconditioner dtype (None: the param's).
      decoupled_decay: AdamW-style weight decay. Default False.
      corrected_weight_decay: decoupled decay scaled by ``lr**2 / max_lr``. Default False.
      flatten: precondition params flattened over ``flatten_start_dim..flatten_end_dim``
        (defaults 2 and -1). Default False.
      stochastic_weight_decay: weight decay scaled by ``2 * U[0, 1)``. Default False.
      deterministic: seed each probe vector from the Python generator. Default False.

    As timm, one ``random.Random(1337)`` serves every param group (its draws decide when
    the factors are balanced, seed the probes with ``deterministic`` and scale the
    stochastic weight decay), and without ``deterministic`` the probes come from torch's
    global generator: the same seed gives timm's trajectory. Steps run eagerly
    (the preconditioner's schedule branches on the host).

    References:
      Li, *Preconditioned Stochastic Gradient Descent*, 2015, arXiv:1512.04202.

    Example:
      >>> import torch
      >>> from adapters.timm import Kron
      >>> w = torch.nn.Parameter(torch.ones(2, 2))
      >>> opt = Kron([w], lr=0.1)
      >>> w.grad = torch.ones(2, 2)
      >>> opt.step()
      >>> sorted(opt.state_dict()["state"][0]), [q.shape for q in opt.state[w]["Q"]]
      (['Q', 'momentum_buffer', 'step', 'update_counter'], [torch.Size([2, 2]), torch.Size([2, 2])])
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 0.001,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        preconditioner_update_probability: Optional[Union[Callable, float]] = None,
        max_size_triangular: int = 2048,
        min_ndim_triangular: int = 2,
        memory_save_mode: Optional[str] = None,
        momentum_into_precond_update: bool = True,
        precond_lr: float = 0.1,
        precond_init_scale: float = 1.0,
        mu_dtype: Optional[torch.dtype] = None,
        precond_dtype: Optional[torch.dtype] = None,
        decoupled_decay: bool = False,
        corrected_weight_decay: bool = False,
        flatten: bool = False,
        flatten_start_dim: int = 2,
        flatten_end_dim: int = -1,
        stochastic_weight_decay: bool = False,
        deterministic: bool = False,
    ):
        if not isinstance(deterministic, bool):
            raise TypeError(f"deterministic must be a bool, got {type(deterministic).__name__}")
        snapshot = max_lr_snapshot(lr, corrected_weight_decay)
        self.deterministic = deterministic
        self._rng_words = python_rng_words(_SEED)
        factory = _kron_group_deterministic if deterministic else _kron_group
        self._setup(params, factory, dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay,
            preconditioner_update_probability=preconditioner_update_probability,
            max_size_triangular=max_size_triangular, min_ndim_triangular=min_ndim_triangular,
            memory_save_mode=memory_save_mode, momentum_into_precond_update=momentum_into_precond_update,
            precond_lr=precond_lr, precond_init_scale=precond_init_scale, mu_dtype=mu_dtype,
            precond_dtype=precond_dtype, decoupled_decay=decoupled_decay,
            corrected_weight_decay=corrected_weight_decay, max_lr_snapshot=snapshot, flatten=flatten,
            flatten_start_dim=flatten_start_dim, flatten_end_dim=flatten_end_dim,
            stochastic_weight_decay=stochastic_weight_decay), False)

    @property
    def rng(self) -> random.Random:
        """A copy of the Python generator as timm's ``Kron.rng`` (its state is this
        optimizer's; assigning one with :meth:`load_state_dict`'s ``rng_state``)."""
        rng = random.Random()
        rng.setstate(python_rng_state(self._rng_words))
        return rng

    # -- stepping ------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        """One step of every group, the groups sharing one Python generator (and drawing
        their probes from torch's global generator unless ``deterministic``), in order."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        extra = {} if loss is None else {"value": loss}
        for group, rt in zip(self.param_groups, self._groups):
            state = _kron_state(rt.state)
            if state is not None:  # the group's generators continue from the shared ones
                state.rng.copy_(self._rng_words)
                if state.torch_rng is not None:
                    state.torch_rng.copy_(_global_rng_state(group["params"][0].device))
            rt.step(group, extra)
            state = _kron_state(rt.state)
            if state is not None:
                self._rng_words = state.rng.clone()
                if state.torch_rng is not None:
                    _set_global_rng_state(group["params"][0].device, state.torch_rng)
        return loss

    # -- state in timm's format ------------------------------------------------------------

    def _export_entry(self, entry: Entry) -> Entry:
        count = entry.get(_S + "count")
        if count is None or int(count) == 0:
            return {}  # timm creates a param's state at its first step
        factors = [entry[name] for name in _factor_names(entry)]
        return {"step": int(count), "update_counter": int(entry[_S + "update_counter"]),
                "momentum_buffer": entry[_S + "mu"], "Q": factors}

    def _import_entry(self, entry: Entry) -> Entry:
        if not entry:
            return {}
        out = {_S + "count": torch.as_tensor(entry["step"]).to(torch.int32),
               _S + "update_counter": torch.as_tensor(entry["update_counter"]).to(torch.int32),
               _S + "mu": entry["momentum_buffer"]}
        for d, q in enumerate(entry["Q"]):
            out[_S + "q" + ("" if d == 0 else f"#{d + 1}")] = q
        return out

    def state_dict(self) -> Dict[str, Any]:
        """timm's layout: torch's ``state``/``param_groups`` and the Python generator's
        ``rng_state`` (``random.Random.getstate()``)."""
        state_dict = super().state_dict()
        state_dict["rng_state"] = python_rng_state(self._rng_words)
        return state_dict

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Load ours or timm's; ``rng_state`` (if present) restores the Python generator."""
        state_dict = state_dict.copy()
        rng_state = state_dict.pop("rng_state", None)
        # checked before anything changes
        words = None if rng_state is None else python_rng_words(tuple(rng_state))
        super().load_state_dict(state_dict)
        if words is not None:
            self._rng_words = words


def _factor_names(entry: Entry) -> list:
    names = [_S + "q"] + [_S + f"q#{d}" for d in range(2, 14)]
    return [n for n in names if n in entry]
