"""``monai.optimizers`` on the functional engine: ``from adapters import monai as optimizers``
replaces ``from monai import optimizers``.

``Novograd`` has MONAI's signature, validation and state_dict format (checkpoints load
both ways); ``generate_param_groups`` gives MONAI's groups; ``LearningRateFinder``,
``WarmupCosineSchedule``, ``LinearLR`` and ``ExponentialLR`` are the adapters' classes of
those names (MONAI's signatures and values). MONAI itself is never imported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

import functional_optim as fo
from functional_optim.hyperparams import concrete
from functional_optim.aliases._common import reject as _reject

from .lr_finder import LearningRateFinder
from .schedulers import ExponentialLR, LinearLR, WarmupCosineSchedule
from .torch_optim import _TorchCompatible

__all__ = ["LearningRateFinder", "ExponentialLR", "LinearLR", "WarmupCosineSchedule", "Novograd",
           "generate_param_groups"]


class Novograd(_TorchCompatible):
    """``monai.optimizers.Novograd`` on the functional engine (``fo.monai.novograd``), with
    MONAI's signature, checks and per-param state (``step`` as a Python int,
    ``exp_avg``, ``exp_avg_sq``, and ``max_exp_avg_sq`` with amsgrad).

    Args:
      params: an iterable of tensors or of param-group dicts.
      lr: learning rate >= 0. Default 1e-3.
      betas: ``(beta1, beta2)``, each in [0, 1): momentum and the decay of the per-param
        second moment (a moving average of the squared gradient norm). Default (0.9, 0.98).
      eps: added to the root of the second moment, >= 0. Default 1e-8.
      weight_decay: L2 penalty >= 0, added after the normalisation. Default 0.
      grad_averaging: scale the momentum's input by ``1 - beta1``. Default False.
      amsgrad: normalise by the running maximum of the second moment. Default False.

    Invalid values raise ValueError with MONAI's message followed by the rule and the
    argument's name. Differences from MONAI: ``p.grad`` is left as it was (MONAI divides it
    in place); the per-param second moment has the param's dtype, at least float32 (MONAI
    keeps it in torch's default dtype, float32 unless changed), so float64 params keep
    float64 precision there; param groups' own values are checked too. The signature is
    MONAI's exactly, so there is no ``compile`` switch: for compiled steps use
    ``FunctionalOptimizer(params, fo.monai.novograd, compile=True, ...)`` (same state names).

    Example:
      >>> import torch
      >>> from adapters.monai import Novograd
      >>> w = torch.nn.Parameter(torch.zeros(2))
      >>> opt = Novograd([w], lr=0.1)
      >>> w.grad = torch.tensor([3.0, 4.0])
      >>> opt.step()
      >>> w.detach(), opt.state_dict()["state"][0]["step"]
      (tensor([-0.0600, -0.0800]), 1)
    """

    _state_keys = {"step": ("ScaleByNovogradState.count", "TraceState.count"),
                   "exp_avg": ("TraceState.trace",),
                   "exp_avg_sq": ("ScaleByNovogradState.nu",),
                   "max_exp_avg_sq": ("ScaleByNovogradState.nu_max",)}
    _int_step = True  # MONAI counts steps in a Python int

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.98),
                 eps: float = 1e-8, weight_decay: float = 0, grad_averaging: bool = False,
                 amsgrad: bool = False):
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        values = {name: concrete(v) for name, v in
                  (("lr", lr), ("eps", eps), ("beta1", betas[0]), ("beta2", betas[1]),
                   ("weight_decay", weight_decay))}
        v = {name: (x if x is not None else 0.0) for name, x in values.items()}
        _reject(v["lr"] < 0.0, f"Invalid learning rate: {lr}", "lr must be >= 0")
        _reject(v["eps"] < 0.0, f"Invalid epsilon value: {eps}", "eps must be >= 0")
        for i in (0, 1):
            b = v[f"beta{i + 1}"]
            _reject(not 0.0 <= b < 1.0, f"Invalid beta parameter at index {i}: {betas[i]}",
                    f"betas[{i}] must be in [0, 1)")
        _reject(v["weight_decay"] < 0.0, f"Invalid weight_decay value: {weight_decay}",
                "weight_decay must be >= 0")
        self._setup(params, fo.monai.novograd, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, grad_averaging=grad_averaging,
            amsgrad=amsgrad), False)


def _as_tuple(value: Any) -> tuple:
    # a sequence (not a string) as a tuple, anything else as a 1-tuple (MONAI's ensure_tuple)
    if _is_sequence(value):
        return tuple(value)
    return (value,)


def _is_sequence(value: Any) -> bool:
    if getattr(value, "ndim", None) == 0:  # a 0-d tensor or array is one value
        return False
    return isinstance(value, Iterable) and not isinstance(value, (str, bytes))


def _repeat(name: str, value: Any, n: int) -> tuple:
    # one value per layer match: a single value repeated, or a sequence of exactly n
    if isinstance(value, torch.Tensor) or type(value).__module__ == "numpy":
        value = value.tolist()
    if not _is_sequence(value):
        return (value,) * n
    value = tuple(value)
    if len(value) != n:
        raise ValueError(f"Sequence must have length {n}, got {len(value)}. ({name} needs one value per "
                         "entry of layer_matches, or a single value)")
    return value


def generate_param_groups(network: torch.nn.Module, layer_matches: Sequence[Callable],
                          match_types: Sequence[str], lr_values: Sequence[float],
                          include_others: bool = True) -> list[dict]:
    """Param groups with their own learning rates, as ``monai.optimizers.generate_param_groups``.

    One group per entry of ``layer_matches``, in that order, each ``{"params": [...], "lr": lr}``:

    * ``"select"``: ``match(network)`` returns a submodule; the group is its ``parameters()``.
    * ``"filter"``: ``match((name, param))`` is called on every item of
      ``network.named_parameters()``; the group is the params it accepts, in that order.

    With ``include_others`` a last group (no ``"lr"``: the optimizer's default) holds the
    network's other params, in ``network.parameters()`` order. Unlike MONAI, the groups'
    ``"params"`` are lists, not one-shot generators (the same params, in the same order),
    so the groups can be inspected or reused.

    Args:
      network: the module whose params are grouped.
      layer_matches: the match functions (one callable is taken as a list of one).
      match_types: ``"select"`` or ``"filter"`` (any case) per match, or one for all.
      lr_values: the learning rate per match, or one for all.
      include_others: add the group of the remaining params. Default True.

    Example:
      >>> import torch
      >>> from adapters.monai import generate_param_groups
      >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
      >>> groups = generate_param_groups(net, [lambda m: m[0], lambda x: x[0] == "1.bias"],
      ...                                ["select", "filter"], [1e-2, 1e-3])
      >>> [len(g["params"]) for g in groups], [g.get("lr") for g in groups]
      ([2, 1, 1], [0.01, 0.001, None])
    """
    matches = _as_tuple(layer_matches)
    types = _repeat("match_types", match_types, len(matches))
    lrs = _repeat("lr_values", lr_values, len(matches))
    groups: list[dict] = []
    taken: set[int] = set()
    for match, kind, lr in zip(matches, types, lrs):
        if not isinstance(kind, str) or kind.lower() not in ("select", "filter"):
            raise ValueError(f"unsupported layer match type: {kind}. (match_types entries must be "
                             "'select' or 'filter')")
        if kind.lower() == "select":
            params = list(match(network).parameters())
        else:
            params = [item[1] for item in network.named_parameters() if match(item)]
        groups.append({"params": params, "lr": lr})
        taken.update(id(p) for p in params)
    if include_others:
        groups.append({"params": [p for p in network.parameters() if id(p) not in taken]})
    return groups
