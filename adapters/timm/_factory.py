"""timm 1.0.31's optimizer factory (``timm.optim.create_optimizer_v2`` and friends) over
the registry of ``_registry``: same signatures, same resolution, same param groups; every
optimizer it returns runs the functional core. timm itself is never imported."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, Optional, Union

import torch
from torch import nn

from ._registry import OptimInfo, default_registry

__all__ = ["list_optimizers", "get_optimizer_info", "get_optimizer_class", "create_optimizer_v2",
           "optimizer_kwargs", "create_optimizer"]


def list_optimizers(
        filter: Union[str, list[str]] = '',
        exclude_filters: Optional[list[str]] = None,
        with_description: bool = False,
) -> list[Union[str, tuple[str, str]]]:
    """The optimizer names, sorted, as ``timm.optim.list_optimizers`` (all 101 of timm
    1.0.31's, apex's ``fused*`` and bitsandbytes' ``bnb*`` included: they run here).

    Args:
      filter: a shell-style pattern (``'adam*'``) or a list of them (names matching any);
        ``''`` lists all. Default ``''``.
      exclude_filters: patterns whose matches are removed. Default None.
      with_description: return ``(name, description)`` pairs. Default False.

    Example:
      >>> from adapters.timm import list_optimizers
      >>> list_optimizers(['la*', 'nla*'])
      ['lamb', 'lambc', 'lambcd', 'lambcw', 'lambw', 'laprop', 'lapropc', 'larc', 'lars', 'nlarc', 'nlars']
      >>> list_optimizers('*adam*', exclude_filters=['*legacy', 'c*', 'bnb*', 'fused*', '*muon'])
      ['adam', 'adamax', 'adamc', 'adamp', 'adamw', 'nadam', 'nadamc', 'nadamw', 'radam', 'radamw']
      >>> list_optimizers('sgd', with_description=True)
      [('sgd', 'torch.Optim Stochastic Gradient Descent (SGD) with Nesterov momentum')]
    """
    return default_registry.list_optimizers(filter, exclude_filters, with_description)


def get_optimizer_info(name: str) -> OptimInfo:
    """The :class:`OptimInfo` of an optimizer name (any case), as ``timm.optim.get_optimizer_info``.

    Args:
      name: the registry name (``'adamw'``, ``'lambc'``, ...).

    Raises:
      ValueError: ``"Optimizer {name} not found in registry"`` (timm's text).

    Example:
      >>> from adapters.timm import get_optimizer_info
      >>> info = get_optimizer_info('AdamP')
      >>> info.name, info.has_betas, info.defaults
      ('adamp', True, {'wd_ratio': 0.01, 'nesterov': True})
    """
    return default_registry.get_optimizer_info(name)


def get_optimizer_class(
        name: str,
        bind_defaults: bool = True,
) -> Union[type, Callable[..., torch.optim.Optimizer]]:
    """The optimizer class of a registry name, as ``timm.optim.get_optimizer_class``.

    Torch's optimizers are the adapters' drop-ins (``'adamw'`` gives ``adapters.AdamW``),
    timm's are ``adapters.timm``'s classes of the same names.

    Args:
      name: the registry name.
      bind_defaults: return ``functools.partial(cls, **defaults)`` when the entry has
        registry defaults (``'sgd'``: ``nesterov=True``); else the class. Default True.

    Raises:
      ValueError: for an unknown name (see :func:`get_optimizer_info`).

    Example:
      >>> import torch
      >>> from adapters.timm import get_optimizer_class
      >>> SGD = get_optimizer_class('sgd')
      >>> SGD.func.__name__, SGD.keywords
      ('SGD', {'nesterov': True})
      >>> opt = SGD([torch.zeros(2, requires_grad=True)], lr=0.1, momentum=0.9)
      >>> get_optimizer_class('sgd', bind_defaults=False).__module__
      'adapters.torch_optim'
    """
    return default_registry.get_optimizer_class(name, bind_defaults=bind_defaults)


def create_optimizer_v2(
        model_or_params: Union[nn.Module, Any],
        opt: str = 'sgd',
        lr: Optional[float] = None,
        weight_decay: float = 0.,
        momentum: float = 0.9,
        foreach: Optional[bool] = None,
        filter_bias_and_bn: bool = True,
        fallback_list: Collection[str] = (),
        fallback_no_weight_decay: bool = False,
        layer_decay: Optional[float] = None,
        layer_decay_min_scale: float = 0.0,
        layer_decay_no_opt_scale: Optional[float] = None,
        param_group_fn: Optional[Callable[[nn.Module], Any]] = None,
        **kwargs: Any,
) -> torch.optim.Optimizer:
    """Create an optimizer by registry name, as ``timm.optim.create_optimizer_v2``.

    Param groups (only when ``model_or_params`` is an ``nn.Module``; params or groups
    given directly pass through untouched and ``weight_decay`` is the optimizer default),
    with ``no_wd = model.no_weight_decay()`` if the model has it:

    1. ``param_group_fn(model)`` if given (``weight_decay`` still passed to the optimizer);
    2. else, if ``layer_decay`` is not None, :func:`param_groups_layer_decay` (``lr_scale``
       per group, applied by timm's schedulers, not by the optimizer) and the optimizer's
       ``weight_decay`` becomes 0;
    3. else :func:`param_groups_weight_decay` (1-D and ``.bias`` params excluded from decay
       when ``filter_bias_and_bn``) and the optimizer's ``weight_decay`` becomes 0.

    Name: ``opt.lower().split('_')``; the last part is the registry name, a first part
    ``'lookahead'`` wraps the result in :class:`Lookahead` (alpha 0.5, k 6), any other
    prefix is ignored (``'foo_adamw'`` is ``'adamw'``). Arguments, in order:
    ``{'weight_decay': weight_decay, **kwargs}``; ``lr`` only if not None (else the
    class default); the registry defaults where not given; ``momentum`` where not given,
    only if the entry ``has_momentum``; ``eps`` dropped unless ``has_eps``, ``betas``
    dropped unless ``has_betas``; ``foreach`` where not given, only if not None. The class
    raises what timm's raises for arguments it does not take (TypeError) or values it
    refuses (ValueError).

    Args:
      model_or_params: a module, or an iterable of params or of param-group dicts.
      opt: the optimizer name. Default ``'sgd'``.
      lr: learning rate; None keeps the class default. Default None.
      weight_decay: weight decay. Default 0.
      momentum: momentum for the optimizers that take one. Default 0.9.
      foreach: passed as ``foreach`` if not None. Default None.
      filter_bias_and_bn: no decay for 1-D and bias params. Default True.
      fallback_list: name patterns of params marked for a hybrid optimizer's fallback. Default ().
      fallback_no_weight_decay: mark ``no_weight_decay()`` params for the fallback too. Default False.
      layer_decay: layer-wise lr decay factor. Default None.
      layer_decay_min_scale: the smallest layer ``lr_scale``. Default 0.
      layer_decay_no_opt_scale: freeze params whose layer scale is below this. Default None.
      param_group_fn: a function building the param groups from the module. Default None.
      **kwargs: further arguments of the optimizer class (``betas``, ``eps``, ...; the
        adapters' drop-ins for torch's classes also take ``compile=True``).

    Raises:
      ValueError: ``"Optimizer {name} not found in registry"`` for an unknown name.

    Example:
      >>> import torch
      >>> from adapters.timm import create_optimizer_v2
      >>> model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
      >>> opt = create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05)
      >>> type(opt).__name__, [(len(g['params']), g['weight_decay']) for g in opt.param_groups]
      ('AdamW', [(3, 0.0), (1, 0.05)])
      >>> opt = create_optimizer_v2(model, 'lookahead_sgd', lr=0.1)
      >>> type(opt).__name__, opt.param_groups[0]['nesterov'], opt.param_groups[0]['momentum']
      ('Lookahead', True, 0.9)
    """
    return default_registry.create_optimizer(
        model_or_params,
        opt=opt,
        lr=lr,
        weight_decay=weight_decay,
        momentum=momentum,
        foreach=foreach,
        weight_decay_exclude_1d=filter_bias_and_bn,
        fallback_list=fallback_list,
        fallback_no_weight_decay=fallback_no_weight_decay,
        layer_decay=layer_decay,
        layer_decay_min_scale=layer_decay_min_scale,
        layer_decay_no_opt_scale=layer_decay_no_opt_scale,
        param_group_fn=param_group_fn,
        **kwargs,
    )


def optimizer_kwargs(cfg: Any) -> dict[str, Any]:
    """:func:`create_optimizer_v2`'s keyword arguments from an argparse-style namespace,
    as ``timm.optim.optimizer_kwargs``.

    ``opt``, ``lr``, ``weight_decay`` and ``momentum`` are required attributes; ``opt_eps``
    (as ``eps``), ``opt_betas`` (as ``betas``), ``layer_decay``, ``layer_decay_min_scale``,
    ``layer_decay_no_opt_scale`` and ``opt_foreach`` (as ``foreach``) are used when present
    and not None, and the dict ``opt_args`` is merged in.

    Args:
      cfg: the namespace (e.g. timm's train.py arguments).

    Example:
      >>> from types import SimpleNamespace
      >>> from adapters.timm import optimizer_kwargs
      >>> optimizer_kwargs(SimpleNamespace(opt='adamw', lr=1e-3, weight_decay=0.05, momentum=0.9,
      ...                                  opt_betas=(0.9, 0.95), opt_eps=None))
      {'opt': 'adamw', 'lr': 0.001, 'weight_decay': 0.05, 'momentum': 0.9, 'betas': (0.9, 0.95)}
    """
    kwargs = {
        'opt': cfg.opt,
        'lr': cfg.lr,
        'weight_decay': cfg.weight_decay,
        'momentum': cfg.momentum,
    }
    if (eps := getattr(cfg, 'opt_eps', None)) is not None:
        kwargs['eps'] = eps
    if (betas := getattr(cfg, 'opt_betas', None)) is not None:
        kwargs['betas'] = betas
    if (layer_decay := getattr(cfg, 'layer_decay', None)) is not None:
        kwargs['layer_decay'] = layer_decay
    if (ld_min := getattr(cfg, 'layer_decay_min_scale', None)) is not None:
        kwargs['layer_decay_min_scale'] = ld_min
    if (ld_no_opt := getattr(cfg, 'layer_decay_no_opt_scale', None)) is not None:
        kwargs['layer_decay_no_opt_scale'] = ld_no_opt
    if (opt_args := getattr(cfg, 'opt_args', None)) is not None:
        kwargs.update(opt_args)
    if (foreach := getattr(cfg, 'opt_foreach', None)) is not None:
        kwargs['foreach'] = foreach
    return kwargs


def create_optimizer(
        args: Any,
        model: Union[nn.Module, Any],
        filter_bias_and_bn: bool = True,
) -> torch.optim.Optimizer:
    """timm's legacy factory: ``create_optimizer_v2(model, **optimizer_kwargs(args),
    filter_bias_and_bn=filter_bias_and_bn)``.

    Args:
      args: an argparse-style namespace (see :func:`optimizer_kwargs`).
      model: a module, or params or param groups.
      filter_bias_and_bn: no decay for 1-D and bias params. Default True.

    Example:
      >>> import torch
      >>> from types import SimpleNamespace
      >>> from adapters.timm import create_optimizer
      >>> args = SimpleNamespace(opt='momentum', lr=0.1, weight_decay=1e-4, momentum=0.8)
      >>> opt = create_optimizer(args, torch.nn.Linear(2, 2))
      >>> type(opt).__name__, opt.param_groups[1]['momentum'], opt.param_groups[1]['nesterov']
      ('SGD', 0.8, False)
    """
    return create_optimizer_v2(
        model,
        **optimizer_kwargs(cfg=args),
        filter_bias_and_bn=filter_bias_and_bn,
    )
