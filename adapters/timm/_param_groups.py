"""timm 1.0.31's param-group helpers (``timm/optim/_param_groups.py``, and the layer
grouping of ``timm/models/_manipulate.py``), re-implemented: same signatures, same groups
in the same order, same keys. timm itself is never imported.

``lr_scale``: the layer-decay groups carry a ``'lr_scale'`` key. As in timm, no optimizer
applies it: timm's schedulers (``timm.scheduler.Scheduler``) set each group's
``lr = value * group['lr_scale']`` when they update the learning rate. An optimizer built
here with such groups and driven by a scheduler that ignores ``lr_scale`` (torch's, or
none) trains every group at the base ``lr``, exactly as timm's optimizers do.
"""

from __future__ import annotations

import collections.abc
import fnmatch
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator
from itertools import chain, islice
from typing import Any, Optional, Union

from torch import nn

__all__ = ["param_groups_weight_decay", "param_groups_layer_decay", "auto_group_layers",
           "group_with_matcher", "group_parameters", "MATCH_PREV_GROUP"]

_logger = logging.getLogger(__name__)

MATCH_PREV_GROUP = (99999,)  # a group_matcher suffix that merges a match into the previous layer id


def _matches_pattern(name: str, patterns: Collection[str]) -> bool:
    """Whether ``name`` matches any of the shell-style ``patterns`` (a full-name match)."""
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def param_groups_weight_decay(
        model: nn.Module,
        weight_decay: Optional[float] = 1e-5,
        weight_decay_exclude_1d: bool = True,
        no_weight_decay_list: Collection[str] = (),
        fallback_list: Collection[str] = (),
        fallback_no_weight_decay: bool = False,
) -> list[dict[str, Any]]:
    """Param groups with and without weight decay, as ``timm.optim.param_groups_weight_decay``.

    For each trainable param (``requires_grad``), in ``named_parameters()`` order: it goes
    without decay if ``weight_decay`` is falsy, or if ``weight_decay_exclude_1d`` and it is
    1-D (or 0-D) or its name ends in ``.bias``, or its name matches a pattern of
    ``no_weight_decay_list`` (``fnmatch``, whole name); else with decay. Params matching
    ``fallback_list`` (plus the no-decay list when ``fallback_no_weight_decay``) go to
    separate groups marked ``'use_fallback': True`` (for hybrid optimizers such as
    timm's Muon). The non-empty groups, in this order::

        {'params': no_decay, 'weight_decay': 0.}
        {'params': decay, 'weight_decay': weight_decay}
        {'params': no_decay_fallback, 'weight_decay': 0., 'use_fallback': True}
        {'params': decay_fallback, 'weight_decay': weight_decay, 'use_fallback': True}

    Args:
      model: the module whose params are grouped.
      weight_decay: the decay of the decayed group. Default 1e-5.
      weight_decay_exclude_1d: no decay for 1-D params and ``.bias`` params. Default True.
      no_weight_decay_list: name patterns without decay (e.g. ``model.no_weight_decay()``).
        Default ().
      fallback_list: name patterns of params for the fallback optimizer. Default ().
      fallback_no_weight_decay: add ``no_weight_decay_list`` to ``fallback_list``. Default False.

    Example:
      >>> import torch
      >>> from adapters.timm import param_groups_weight_decay
      >>> model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
      >>> [(len(g['params']), g['weight_decay']) for g in param_groups_weight_decay(model, 0.05)]
      [(3, 0.0), (1, 0.05)]
    """
    if fallback_no_weight_decay:
        fallback_list = set(fallback_list) | set(no_weight_decay_list)
    no_wd = not weight_decay

    decay, decay_fallback, no_decay, no_decay_fallback = [], [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_fallback = _matches_pattern(name, fallback_list)
        if no_wd:
            (no_decay_fallback if is_fallback else no_decay).append(param)
            continue
        excluded_1d = weight_decay_exclude_1d and (param.ndim <= 1 or name.endswith(".bias"))
        if excluded_1d or _matches_pattern(name, no_weight_decay_list):
            (no_decay_fallback if is_fallback else no_decay).append(param)
        else:
            (decay_fallback if is_fallback else decay).append(param)

    groups = []
    if no_decay:
        groups.append({'params': no_decay, 'weight_decay': 0.})
    if decay:
        groups.append({'params': decay, 'weight_decay': weight_decay})
    if no_decay_fallback:
        groups.append({'params': no_decay_fallback, 'weight_decay': 0., 'use_fallback': True})
    if decay_fallback:
        groups.append({'params': decay_fallback, 'weight_decay': weight_decay, 'use_fallback': True})
    return groups


def _group(it: Any, size: int) -> Iterator[tuple]:
    # consecutive tuples of ``size`` items (the last one shorter)
    it = iter(it)
    return iter(lambda: tuple(islice(it, size)), ())


def auto_group_layers(model: nn.Module, layers_per_group: int = 12,
                      num_groups: Optional[int] = None) -> dict[str, int]:
    """Layer ids for models without a ``group_matcher``, as ``timm.optim.auto_group_layers``.

    The head is the params whose names start with ``model.pretrained_cfg['classifier']``
    (a prefix or a tuple of prefixes); without one, every param counts as head. The
    other ("trunk") params, in ``named_parameters()`` order, are chunked
    ``layers_per_group`` per id (0, 1, ...); with ``num_groups`` the chunk size is
    ``ceil(#trunk / num_groups)``. Head params get the id after the last trunk chunk.

    Args:
      model: the module.
      layers_per_group: trunk params per layer id. Default 12.
      num_groups: the number of trunk ids wanted instead (overrides ``layers_per_group``).
        Default None.

    Returns:
      ``{param name: layer id}``.

    Example:
      >>> import torch
      >>> from adapters.timm import auto_group_layers
      >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
      >>> model.pretrained_cfg = {'classifier': '1'}
      >>> auto_group_layers(model, layers_per_group=1)
      {'0.weight': 0, '0.bias': 1, '1.weight': 2, '1.bias': 2}
    """
    def _in_head(n: str, hp: Any) -> bool:
        if not hp:
            return True
        if isinstance(hp, (tuple, list)):
            return any(n.startswith(hpi) for hpi in hp)
        return n.startswith(hp)

    head_prefix = getattr(model, 'pretrained_cfg', {}).get('classifier', None)
    names_trunk, names_head = [], []
    for n, _ in model.named_parameters():
        (names_head if _in_head(n, head_prefix) else names_trunk).append(n)

    num_trunk_layers = len(names_trunk)
    if num_groups is not None:
        layers_per_group = -(num_trunk_layers // -num_groups)
    trunk_groups = list(_group(names_trunk, layers_per_group))
    num_trunk_groups = len(trunk_groups)
    layer_map = {n: i for i, chunk in enumerate(trunk_groups) for n in chunk}
    layer_map.update({n: num_trunk_groups for n in names_head})
    return layer_map


_layer_map = auto_group_layers  # timm's old name


def group_with_matcher(named_objects: Iterator[tuple[str, Any]], group_matcher: Union[dict, Callable],
                       return_values: bool = False, reverse: bool = False) -> dict:
    """Layer ids from a model's ``group_matcher``, as timm's ``group_with_matcher``.

    ``group_matcher`` is a dict ``{group name: regex | [(regex, suffix tuple or None), ...]}``
    or a function ``name -> ordinal (number or tuple)``. With the dict, a name's sort key is
    ``(group ordinal, *captured groups as floats, *suffix)`` from the first spec whose regex
    matches (``re.match``); unmatched names get ``(inf,)`` (the head). The sorted keys are
    renumbered 0, 1, ...; a key ending in ``MATCH_PREV_GROUP[0]`` (99999) joins the id before it.

    Args:
      named_objects: ``(name, object)`` pairs, e.g. ``model.named_parameters()``.
      group_matcher: the dict or function above.
      return_values: list the objects instead of their names. Default False.
      reverse: return ``{name: layer id}`` instead of ``{layer id: [names]}``. Default False.

    Example:
      >>> from adapters.timm._param_groups import group_with_matcher
      >>> names = [('stem.w', 0), ('blocks.1.w', 0), ('blocks.0.w', 0), ('norm.w', 0), ('head.w', 0)]
      >>> matcher = {'stem': r'^stem', 'blocks': [(r'^blocks\\.(\\d+)', None), (r'^norm', (99999,))]}
      >>> group_with_matcher(names, matcher, reverse=True)
      {'stem.w': 0, 'blocks.0.w': 1, 'blocks.1.w': 2, 'norm.w': 2, 'head.w': 3}
    """
    if isinstance(group_matcher, dict):
        compiled = []
        for group_ordinal, (_, mspec) in enumerate(group_matcher.items()):
            if mspec is None:
                continue
            if isinstance(mspec, (tuple, list)):
                for sspec in mspec:
                    compiled += [(re.compile(sspec[0]), (group_ordinal,), sspec[1])]
            else:
                compiled += [(re.compile(mspec), (group_ordinal,), None)]
        group_matcher = compiled

    def _get_grouping(name: str) -> tuple:
        if isinstance(group_matcher, (list, tuple)):
            for match_fn, prefix, suffix in group_matcher:
                r = match_fn.match(name)
                if r:
                    parts = (prefix, r.groups(), suffix)
                    return tuple(map(float, chain.from_iterable(filter(None, parts))))
            return float('inf'),
        ordinal = group_matcher(name)
        if not isinstance(ordinal, collections.abc.Iterable):
            return ordinal,
        return tuple(ordinal)

    grouping = defaultdict(list)
    for k, v in named_objects:
        grouping[_get_grouping(k)].append(v if return_values else k)

    layer_id_to_param = defaultdict(list)
    lid = -1
    for k in sorted(filter(lambda x: x is not None, grouping.keys())):
        if lid < 0 or k[-1] != MATCH_PREV_GROUP[0]:
            lid += 1
        layer_id_to_param[lid].extend(grouping[k])

    if reverse:
        if return_values:
            raise ValueError("reverse mapping only sensible for name output (return_values must be False "
                             "with reverse=True)")
        param_to_layer_id = {}
        for lid, names in layer_id_to_param.items():
            for n in names:
                param_to_layer_id[n] = lid
        return param_to_layer_id
    return layer_id_to_param


def group_parameters(module: nn.Module, group_matcher: Union[dict, Callable], return_values: bool = False,
                     reverse: bool = False) -> dict:
    """:func:`group_with_matcher` over ``module.named_parameters()`` (timm's ``group_parameters``).

    Example:
      >>> import torch
      >>> from adapters.timm._param_groups import group_parameters
      >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
      >>> group_parameters(model, {'first': r'^0\\.'}, reverse=True)
      {'0.weight': 0, '0.bias': 0, '1.weight': 1, '1.bias': 1}
    """
    return group_with_matcher(module.named_parameters(), group_matcher, return_values=return_values,
                              reverse=reverse)


def param_groups_layer_decay(
        model: nn.Module,
        weight_decay: float = 0.05,
        no_weight_decay_list: Collection[str] = (),
        fallback_list: Collection[str] = (),
        fallback_no_weight_decay: bool = False,
        weight_decay_exclude_1d: bool = True,
        layer_decay: float = .75,
        min_scale: float = 0.,
        no_opt_scale: Optional[float] = None,
        verbose: bool = False,
) -> list[dict[str, Any]]:
    """Param groups for layer-wise lr decay and weight decay (BEiT's), as
    ``timm.optim.param_groups_layer_decay``.

    Layer ids come from ``model.group_matcher(coarse=False)`` (:func:`group_parameters`)
    if the model has one, else from :func:`auto_group_layers`. With
    ``L = max id`` (a name without an id gets ``L``), layer ``i`` gets::

        lr_scale_i = max(min_scale, layer_decay ** (L - i))

    For each trainable param, in ``named_parameters()`` order: no decay if
    ``weight_decay_exclude_1d`` and ``ndim <= 1`` (``.bias`` names are not checked here,
    unlike :func:`param_groups_weight_decay`) or its name matches
    ``no_weight_decay_list``; if ``no_opt_scale`` and its scale is below it, the param is
    frozen (``requires_grad = False``, as timm does) and left out. It joins the group
    ``layer_{id}_{decay|no_decay}[_fallback]``, created at first use as
    ``{'lr_scale': scale, 'weight_decay': wd or 0., 'params': [...]}`` (plus
    ``'use_fallback': True`` for ``fallback_list`` matches). Groups come in order of
    creation. ``lr_scale`` is applied by timm's schedulers, not by the optimizer (see
    this module's docstring).

    Args:
      model: the module whose params are grouped.
      weight_decay: the decay of the decayed groups. Default 0.05.
      no_weight_decay_list: name patterns without decay. Default ().
      fallback_list: name patterns of params for the fallback optimizer. Default ().
      fallback_no_weight_decay: add ``no_weight_decay_list`` to ``fallback_list``. Default False.
      weight_decay_exclude_1d: no decay for params with ``ndim <= 1``. Default True.
      layer_decay: the per-layer lr decay factor. Default 0.75.
      min_scale: the smallest ``lr_scale``. Default 0.
      no_opt_scale: freeze params whose scale is below this. Default None.
      verbose: log the groups' param names. Default False.

    Example:
      >>> import torch
      >>> from adapters.timm import param_groups_layer_decay
      >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
      >>> model.pretrained_cfg = {'classifier': '1'}
      >>> [(g['lr_scale'], g['weight_decay'], len(g['params']))
      ...  for g in param_groups_layer_decay(model, layer_decay=0.5)]
      [(0.5, 0.05, 1), (0.5, 0.0, 1), (1.0, 0.05, 1), (1.0, 0.0, 1)]
    """
    if fallback_no_weight_decay:
        fallback_list = set(fallback_list) | set(no_weight_decay_list)

    param_group_names: dict[str, dict[str, Any]] = {}
    param_groups: dict[str, dict[str, Any]] = {}

    if hasattr(model, 'group_matcher'):
        layer_map = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    else:
        layer_map = auto_group_layers(model)
    num_layers = max(layer_map.values()) + 1
    if num_layers == 1:
        _logger.warning(
            'Layer-wise lr decay has no effect, all parameters were assigned to one layer. Models without a '
            'group_matcher() need a pretrained_cfg["classifier"] for automatic layer grouping.'
        )
    layer_max = num_layers - 1
    layer_scales = list(max(min_scale, layer_decay ** (layer_max - i)) for i in range(num_layers))

    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_fallback = _matches_pattern(name, fallback_list)
        if (weight_decay_exclude_1d and param.ndim <= 1) or _matches_pattern(name, no_weight_decay_list):
            g_decay, this_decay = "no_decay", 0.
        else:
            g_decay, this_decay = "decay", weight_decay

        layer_id = layer_map.get(name, layer_max)
        this_scale = layer_scales[layer_id]
        if no_opt_scale and this_scale < no_opt_scale:
            param.requires_grad = False  # excluded from optimization, as timm does
            continue

        group_name = "layer_%d_%s%s" % (layer_id, g_decay, "_fallback" if is_fallback else "")
        if group_name not in param_groups:
            param_group_names[group_name] = {"lr_scale": this_scale, "weight_decay": this_decay,
                                             "use_fallback": is_fallback, "param_names": []}
            param_groups[group_name] = {"lr_scale": this_scale, "weight_decay": this_decay, "params": []}
            if is_fallback:
                param_groups[group_name]["use_fallback"] = True
        param_group_names[group_name]["param_names"].append(name)
        param_groups[group_name]["params"].append(param)

    if verbose:
        import json
        _logger.info("parameter groups: \n%s" % json.dumps(param_group_names, indent=2))
    return list(param_groups.values())
