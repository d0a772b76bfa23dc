"""timm 1.0.31's optimizer registry (``timm.optim._optim_factory``) as a data table.

Every name timm registers is here, with timm's description, flags and bound defaults.
Each entry names the class that builds it in this package as a lazily imported
``"module:Class"`` path: torch.optim's classes map to the adapters' drop-ins
(``adapters.SGD``, ...), timm's own classes to ``adapters.timm._<module>``, bitsandbytes'
to ``adapters.bnb``, apex's fused* to ``adapters.apex``: all 101 names build here, on any
machine. timm itself is never imported.
"""

from __future__ import annotations

import importlib
import logging
from fnmatch import fnmatch
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import partial
from typing import Any, Optional, Union

import torch
from torch import nn

from ._lookahead import Lookahead
from ._param_groups import param_groups_layer_decay, param_groups_weight_decay

__all__ = ["OptimInfo", "OptimizerRegistry", "default_registry"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OptimInfo:
    """Immutable configuration of one registry name (timm's ``OptimInfo``, same fields).

    Attributes:
      name: unique identifier of the optimizer (lowercase).
      opt_class: the class, or its lazily imported path (``"module:Class"``, or timm's
        ``"module.Class"``).
      description: brief description of the optimizer. Default ``''``.
      has_eps: whether the class accepts ``eps`` (else the factory drops it). Default True.
      has_momentum: whether it accepts ``momentum`` (the factory then passes its
        ``momentum``, 0.9 by default). Default False.
      has_betas: whether it accepts ``betas`` (else the factory drops it). Default False.
      num_betas: number of betas (valid if ``has_betas``). Default 2.
      second_order: whether ``step`` needs a graph to differentiate (``create_graph=True``
        in backward). Default False.
      defaults: keyword arguments bound by the registry (``get_optimizer_class``) and used
        by the factory where the caller gives none. Default None.

    Example:
      >>> from adapters.timm import get_optimizer_info
      >>> info = get_optimizer_info("sgd")
      >>> info.opt_class, info.has_momentum, info.defaults
      ('adapters:SGD', True, {'nesterov': True})
    """

    name: str
    opt_class: Union[str, type]
    description: str = ''
    has_eps: bool = True
    has_momentum: bool = False
    has_betas: bool = False
    num_betas: int = 2
    second_order: bool = False
    defaults: Optional[dict[str, Any]] = None


def _import_class(class_string: str) -> type:
    """The class at ``"module:Class"`` (or ``"module.Class"``), imported now."""
    try:
        if ":" in class_string:
            module_name, class_name = class_string.split(":", 1)
        else:
            module_name, class_name = class_string.rsplit(".", 1)
        module = importlib.import_module(module_name)
        return getattr(module, class_name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ImportError(f"Could not import {class_string}: {e}") from e


class OptimizerRegistry:
    """Registry of optimizer configurations and the factory that builds them (timm's
    ``OptimizerRegistry``, same methods).

    Example:
      >>> import torch
      >>> from adapters.timm import OptimInfo, OptimizerRegistry
      >>> registry = OptimizerRegistry()
      >>> registry.register(OptimInfo("mysgd", "adapters:SGD", has_eps=False, has_momentum=True))
      >>> registry.list_optimizers()
      ['mysgd']
      >>> type(registry.create_optimizer([torch.zeros(1, requires_grad=True)], "mysgd", lr=0.1)).__name__
      'SGD'
    """

    def __init__(self) -> None:
        self._optimizers: dict[str, OptimInfo] = {}
        self._foreach_defaults: set[str] = {'lion'}  # kept as timm keeps it; never consulted (nor by timm)

    def register(self, info: OptimInfo) -> None:
        """Register an optimizer configuration (a name already registered is overwritten,
        with a warning)."""
        name = info.name.lower()
        if name in self._optimizers:
            _logger.warning(f'Optimizer {name} already registered, overwriting')
        self._optimizers[name] = info

    def register_alias(self, alias: str, target: str) -> None:
        """Register ``alias`` for the existing ``target`` (KeyError if there is none)."""
        target = target.lower()
        if target not in self._optimizers:
            raise KeyError(f'Cannot create alias for non-existent optimizer {target}')
        self._optimizers[alias.lower()] = self._optimizers[target]

    def register_foreach_default(self, name: str) -> None:
        """Register an optimizer as defaulting to foreach=True (recorded only, as in timm)."""
        self._foreach_defaults.add(name.lower())

    def list_optimizers(
            self,
            filter: Union[str, list[str]] = '',
            exclude_filters: Optional[list[str]] = None,
            with_description: bool = False,
    ) -> list[Union[str, tuple[str, str]]]:
        """The available names, sorted, filtered as ``adapters.timm.list_optimizers``."""
        names = sorted(self._optimizers.keys())
        if filter:
            filters = [filter] if isinstance(filter, str) else filter
            filtered_names = set()
            for f in filters:
                filtered_names.update(n for n in names if fnmatch(n, f))
            names = sorted(filtered_names)
        if exclude_filters:
            for exclude_filter in exclude_filters:
                names = [n for n in names if not fnmatch(n, exclude_filter)]
        if with_description:
            return [(name, self._optimizers[name].description) for name in names]
        return names

    def get_optimizer_info(self, name: str) -> OptimInfo:
        """The ``OptimInfo`` of ``name`` (any case); ValueError if it is not registered."""
        name = name.lower()
        if name not in self._optimizers:
            raise ValueError(f'Optimizer {name} not found in registry')
        return self._optimizers[name]

    def get_optimizer_class(
            self,
            name_or_info: Union[str, OptimInfo],
            bind_defaults: bool = True,
    ) -> Union[type, Callable[..., torch.optim.Optimizer]]:
        """The class of ``name_or_info``, as ``functools.partial(cls, **defaults)`` when
        ``bind_defaults`` and the entry has defaults."""
        if isinstance(name_or_info, str):
            opt_info = self.get_optimizer_info(name_or_info)
        elif isinstance(name_or_info, OptimInfo):
            opt_info = name_or_info
        else:
            raise TypeError(f"name_or_info must be a name or an OptimInfo, got {type(name_or_info).__name__}")
        opt_class = opt_info.opt_class
        if isinstance(opt_class, str):
            opt_class = _import_class(opt_class)
        if bind_defaults and opt_info.defaults:
            opt_class = partial(opt_class, **opt_info.defaults)
        return opt_class

    def create_optimizer(
            self,
            model_or_params: Union[nn.Module, Any],
            opt: str,
            lr: Optional[float] = None,
            weight_decay: float = 0.,
            momentum: float = 0.9,
            foreach: Optional[bool] = None,
            weight_decay_exclude_1d: bool = True,
            fallback_list: Collection[str] = (),
            fallback_no_weight_decay: bool = False,
            layer_decay: Optional[float] = None,
            layer_decay_min_scale: float = 0.0,
            layer_decay_no_opt_scale: Optional[float] = None,
            param_group_fn: Optional[Callable[[nn.Module], Any]] = None,
            **kwargs: Any,
    ) -> torch.optim.Optimizer:
        """Build an optimizer (``adapters.timm.create_optimizer_v2`` documents the rules;
        there ``filter_bias_and_bn`` is this method's ``weight_decay_exclude_1d``)."""
        if isinstance(model_or_params, nn.Module):
            # param groups with weight decay and/or layer decay, built first (as timm does)
            no_weight_decay = getattr(model_or_params, 'no_weight_decay', lambda: set())()
            if param_group_fn:
                params = param_group_fn(model_or_params)
            elif layer_decay is not None:
                params = param_groups_layer_decay(
                    model_or_params,
                    weight_decay=weight_decay,
                    layer_decay=layer_decay,
                    no_weight_decay_list=no_weight_decay,
                    fallback_list=fallback_list,
                    fallback_no_weight_decay=fallback_no_weight_decay,
                    weight_decay_exclude_1d=weight_decay_exclude_1d,
                    min_scale=layer_decay_min_scale,
                    no_opt_scale=layer_decay_no_opt_scale,
                )
                weight_decay = 0.
            else:
                params = param_groups_weight_decay(
                    model_or_params,
                    weight_decay=weight_decay,
                    weight_decay_exclude_1d=weight_decay_exclude_1d,
                    no_weight_decay_list=no_weight_decay,
                    fallback_list=fallback_list,
                    fallback_no_weight_decay=fallback_no_weight_decay,
                )
                weight_decay = 0.
        else:
            params = model_or_params

        if not isinstance(opt, str):
            raise TypeError(f"opt must be an optimizer name (str), got {type(opt).__name__}")
        opt_split = opt.lower().split('_')
        opt_name = opt_split[-1]
        use_lookahead = opt_split[0] == 'lookahead' if len(opt_split) > 1 else False
        opt_info = self.get_optimizer_info(opt_name)

        opt_args: dict[str, Any] = {'weight_decay': weight_decay, **kwargs}
        if lr is not None:
            opt_args['lr'] = lr
        if opt_info.defaults:
            for key, value in opt_info.defaults.items():
                opt_args.setdefault(key, value)
        if opt_info.has_momentum:
            opt_args.setdefault('momentum', momentum)
        if not opt_info.has_eps:
            opt_args.pop('eps', None)
        if not opt_info.has_betas:
            opt_args.pop('betas', None)
        if foreach is not None:
            opt_args.setdefault('foreach', foreach)

        opt_class = self.get_optimizer_class(opt_info, bind_defaults=False)
        optimizer = opt_class(params, **opt_args)
        if use_lookahead:
            optimizer = Lookahead(optimizer)
        return optimizer


# -- the table ------------------------------------------------------------------------

# timm's class -> the class that builds it here ("module:Class")
_CLASSES: dict[str, str] = {
    "torch.optim.SGD": "adapters:SGD", "torch.optim.Adam": "adapters:Adam",
    "torch.optim.AdamW": "adapters:AdamW", "torch.optim.NAdam": "adapters:NAdam",
    "torch.optim.RAdam": "adapters:RAdam", "torch.optim.Adamax": "adapters:Adamax",
    "torch.optim.Adadelta": "adapters:Adadelta", "torch.optim.Adagrad": "adapters:Adagrad",
    "torch.optim.RMSprop": "adapters:RMSprop",
    "timm.optim.AdaBelief": "adapters.timm._adabelief:AdaBelief",
    "timm.optim.AdamP": "adapters.timm._adamp:AdamP",
    "timm.optim.SGDP": "adapters.timm._sgdp:SGDP",
    "timm.optim.AdamWLegacy": "adapters.timm._adamw_legacy:AdamWLegacy",
    "timm.optim.NAdamLegacy": "adapters.timm._nadam_legacy:NAdamLegacy",
    "timm.optim.RAdamLegacy": "adapters.timm._radam_legacy:RAdamLegacy",
    "timm.optim.RMSpropTF": "adapters.timm._rmsprop_tf:RMSpropTF",
    "timm.optim.Lamb": "adapters.timm._lamb:Lamb",
    "timm.optim.Lars": "adapters.timm._lars:Lars",
    "timm.optim.NvNovoGrad": "adapters.timm._nvnovograd:NvNovoGrad",
    "timm.optim.MADGRAD": "adapters.timm._madgrad:MADGRAD",
    "timm.optim.Adafactor": "adapters.timm._adafactor:Adafactor",
    "timm.optim.Adahessian": "adapters.timm._adahessian:Adahessian",
    "timm.optim.Lion": "adapters.timm._lion:Lion",
    "timm.optim.AdafactorBigVision": "adapters.timm._adafactor_bv:AdafactorBigVision",
    "apex.optimizers.FusedSGD": "adapters.apex:FusedSGD", "apex.optimizers.FusedAdam": "adapters.apex:FusedAdam",
    "apex.optimizers.FusedLAMB": "adapters.apex:FusedLAMB",
    "apex.optimizers.FusedNovoGrad": "adapters.apex:FusedNovoGrad",
    "timm.optim.Adan": "adapters.timm._adan:Adan",
    "timm.optim.Adopt": "adapters.timm._adopt:Adopt",
    "timm.optim.NAdamW": "adapters.timm._nadamw:NAdamW",
    "timm.optim.SGDW": "adapters.timm._sgdw:SGDW",
    "timm.optim.LaProp": "adapters.timm._laprop:LaProp",
    "timm.optim.Mars": "adapters.timm._mars:Mars",
    "timm.optim.Kron": "adapters.timm._kron:Kron",
    "timm.optim.Muon": "adapters.timm._muon:Muon",
    **{f"bitsandbytes.optim.{name}": f"adapters.bnb:{name}" for name in (
        "SGD", "SGD8bit", "Adam", "Adam8bit", "AdamW", "AdamW8bit", "Lion", "Lion8bit", "AdEMAMix", "AdEMAMix8bit")},
}

_CAUTION = {'caution': True}
_CWD = {'corrected_weight_decay': True}
_DD = {'decoupled_decay': True}
_NESTEROV = {'nesterov': True}
_CORRECTED = ' with corrected weight decay (lr²/max_lr scaling)'

# (name, timm's class, flags, bound defaults, description), in timm's registration order.
# Flags: E has_eps, M has_momentum, B has_betas, 3 three betas, H second order.
_TABLE: list[tuple[str, str, str, Optional[dict[str, Any]], str]] = [
    # _register_sgd_variants
    ('sgd', 'torch.optim.SGD', 'M', _NESTEROV,
     'torch.Optim Stochastic Gradient Descent (SGD) with Nesterov momentum'),
    ('momentum', 'torch.optim.SGD', 'M', {'nesterov': False},
     'torch.Optim Stochastic Gradient Descent (SGD) with classical momentum'),
    ('sgdp', 'timm.optim.SGDP', 'EM', _NESTEROV, 'SGD with built-in projection to unit norm sphere'),
    ('sgdw', 'timm.optim.SGDW', 'M', _NESTEROV, 'SGD with decoupled weight decay and Nesterov momentum'),
    # _register_adam_variants
    ('adam', 'torch.optim.Adam', 'EB', None, 'torch.optim.Adam, Adaptive Moment Estimation'),
    ('adamw', 'torch.optim.AdamW', 'EB', None, 'torch.optim.AdamW, Adam with decoupled weight decay'),
    ('adamwlegacy', 'timm.optim.AdamWLegacy', 'EB', None,
     'legacy impl of AdamW that pre-dates inclusion to torch.optim'),
    ('adamp', 'timm.optim.AdamP', 'EB', {'wd_ratio': 0.01, 'nesterov': True},
     'Adam with built-in projection to unit norm sphere'),
    ('nadam', 'torch.optim.NAdam', 'EB', None, 'torch.optim.NAdam, Adam with Nesterov momentum'),
    ('nadamlegacy', 'timm.optim.NAdamLegacy', 'EB', None,
     'legacy impl of NAdam that pre-dates inclusion in torch.optim'),
    ('nadamw', 'timm.optim.NAdamW', 'EB', None,
     'Adam with Nesterov momentum and decoupled weight decay, mlcommons/algorithmic-efficiency impl'),
    ('radam', 'torch.optim.RAdam', 'EB', None, 'torch.optim.RAdam, Rectified Adam with variance adaptation'),
    ('radamlegacy', 'timm.optim.RAdamLegacy', 'EB', None,
     'legacy impl of RAdam that predates inclusion in torch.optim'),
    ('radamw', 'torch.optim.RAdam', 'EB', {'decoupled_weight_decay': True},
     'torch.optim.RAdamW, Rectified Adam with variance adaptation and decoupled weight decay'),
    ('adamax', 'torch.optim.Adamax', 'EB', None,
     'torch.optim.Adamax, Adam with infinity norm for more stable updates'),
    ('adafactor', 'timm.optim.Adafactor', 'EB', None,
     'Memory-efficient implementation of Adam with factored gradients'),
    ('adafactorbv', 'timm.optim.AdafactorBigVision', 'EM', None,
     'Big Vision variant of Adafactor with factored gradients, half precision momentum'),
    ('adopt', 'timm.optim.Adopt', 'EB', None, 'Modified Adam that can converge with any β2 with the optimal rate'),
    ('adoptw', 'timm.optim.Adopt', 'EB', {'decoupled': True},
     'Modified AdamW (decoupled decay) that can converge with any β2 with the optimal rate'),
    # _register_lamb_lars
    ('lamb', 'timm.optim.Lamb', 'EB', None, 'Layer-wise Adaptive Moments for batch optimization'),
    ('lambc', 'timm.optim.Lamb', 'EB', {'trust_clip': True}, 'LAMB with trust ratio clipping for stability'),
    ('lambw', 'timm.optim.Lamb', 'EB', _DD, 'LAMB with decoupled weight decay'),
    ('lambcw', 'timm.optim.Lamb', 'EB', {'trust_clip': True, **_DD},
     'LAMB with trust ratio clipping for stability and decoupled decay'),
    ('lars', 'timm.optim.Lars', 'EM', None, 'Layer-wise Adaptive Rate Scaling'),
    ('larc', 'timm.optim.Lars', 'EM', {'trust_clip': True}, 'LARS with trust ratio clipping for stability'),
    ('nlars', 'timm.optim.Lars', 'EM', _NESTEROV, 'LARS with Nesterov momentum'),
    ('nlarc', 'timm.optim.Lars', 'EM', {'nesterov': True, 'trust_clip': True},
     'LARS with Nesterov momentum & trust ratio clipping'),
    # _register_other_optimizers
    ('adabelief', 'timm.optim.AdaBelief', 'EB', {'rectify': False},
     'Adapts learning rate based on gradient prediction error'),
    ('radabelief', 'timm.optim.AdaBelief', 'EB', {'rectify': True}, 'Rectified AdaBelief with variance adaptation'),
    ('adadelta', 'torch.optim.Adadelta', 'E', None,
     'torch.optim.Adadelta, Adapts learning rates based on running windows of gradients'),
    ('adagrad', 'torch.optim.Adagrad', 'E', {'eps': 1e-8},
     'torch.optim.Adagrad, Adapts learning rates using cumulative squared gradients'),
    ('adan', 'timm.optim.Adan', 'EB3', {'no_prox': False}, 'Adaptive Nesterov Momentum Algorithm'),
    ('adanw', 'timm.optim.Adan', 'EB3', {'no_prox': True}, 'Adaptive Nesterov Momentum with decoupled weight decay'),
    ('adahessian', 'timm.optim.Adahessian', 'EBH', None, 'An Adaptive Second Order Optimizer'),
    ('kron', 'timm.optim.Kron', 'M', None, 'PSGD optimizer with Kronecker-factored preconditioner'),
    ('kronw', 'timm.optim.Kron', 'M', _DD,
     'PSGD optimizer with Kronecker-factored preconditioner and decoupled weight decay'),
    ('laprop', 'timm.optim.LaProp', 'EB', None, 'Separating Momentum and Adaptivity in Adam'),
    ('lion', 'timm.optim.Lion', 'B', None, 'Evolved Sign Momentum optimizer for improved convergence'),
    ('madgrad', 'timm.optim.MADGRAD', 'EM', None, 'Momentum-based Adaptive gradient method'),
    ('madgradw', 'timm.optim.MADGRAD', 'EM', _DD, 'MADGRAD with decoupled weight decay'),
    ('mars', 'timm.optim.Mars', 'EB', None, 'Unleashing the Power of Variance Reduction for Training Large Models'),
    ('muon', 'timm.optim.Muon', 'EMB', None,
     'MomentUm Orthogonalized by Newton-schulz with AdamW fallback for 1D params'),
    ('nmuon', 'timm.optim.Muon', 'EMB', _NESTEROV,
     'MomentUm Orthogonalized by Newton-schulz with Nesterov and NAdamW fallback for 1D params'),
    ('adamuon', 'timm.optim.Muon', 'EMB', {'algo': 'adamuon'},
     'AdaMuon: Muon with adaptive second moment estimation on orthogonalized directions'),
    ('nadamuon', 'timm.optim.Muon', 'EMB', {'algo': 'adamuon', 'nesterov': True},
     'AdaMuon with Nesterov momentum and NAdamW fallback for 1D params'),
    ('novograd', 'timm.optim.NvNovoGrad', 'EB', None, 'Normalized Adam with L2 norm gradient normalization'),
    ('novogradw', 'timm.optim.NvNovoGrad', 'EB', _DD, 'NovoGrad with decoupled weight decay'),
    ('rmsprop', 'torch.optim.RMSprop', 'EM', {'alpha': 0.9}, 'torch.optim.RMSprop, Root Mean Square Propagation'),
    ('rmsproptf', 'timm.optim.RMSpropTF', 'EM', {'alpha': 0.9},
     'TensorFlow-style RMSprop implementation, Root Mean Square Propagation'),
    ('rmsproptfw', 'timm.optim.RMSpropTF', 'EM', {'alpha': 0.9, **_DD},
     'TensorFlow-style RMSprop with decoupled weight decay'),
    # _register_apex_optimizers
    ('fusedsgd', 'apex.optimizers.FusedSGD', 'M', _NESTEROV,
     'NVIDIA APEX fused SGD implementation for faster training'),
    ('fusedadam', 'apex.optimizers.FusedAdam', 'EB', {'adam_w_mode': False}, 'NVIDIA APEX fused Adam implementation'),
    ('fusedadamw', 'apex.optimizers.FusedAdam', 'EB', {'adam_w_mode': True}, 'NVIDIA APEX fused AdamW implementation'),
    ('fusedlamb', 'apex.optimizers.FusedLAMB', 'EB', None, 'NVIDIA APEX fused LAMB implementation'),
    ('fusednovograd', 'apex.optimizers.FusedNovoGrad', 'EB', {'betas': (0.95, 0.98)},
     'NVIDIA APEX fused NovoGrad implementation'),
    # _register_bnb_optimizers
    ('bnbsgd', 'bitsandbytes.optim.SGD', 'M', _NESTEROV, 'bitsandbytes SGD'),
    ('bnbsgd8bit', 'bitsandbytes.optim.SGD8bit', 'M', _NESTEROV, 'bitsandbytes 8-bit SGD with dynamic quantization'),
    ('bnbadam', 'bitsandbytes.optim.Adam', 'EB', None, 'bitsandbytes Adam'),
    ('bnbadam8bit', 'bitsandbytes.optim.Adam8bit', 'EB', None, 'bitsandbytes 8-bit Adam with dynamic quantization'),
    ('bnbadamw', 'bitsandbytes.optim.AdamW', 'EB', None, 'bitsandbytes AdamW'),
    ('bnbadamw8bit', 'bitsandbytes.optim.AdamW8bit', 'EB', None,
     'bitsandbytes 8-bit AdamW with dynamic quantization'),
    ('bnblion', 'bitsandbytes.optim.Lion', 'B', None, 'bitsandbytes Lion'),
    ('bnblion8bit', 'bitsandbytes.optim.Lion8bit', 'B', None, 'bitsandbytes 8-bit Lion with dynamic quantization'),
    ('bnbademamix', 'bitsandbytes.optim.AdEMAMix', 'EB3', None, 'bitsandbytes AdEMAMix'),
    ('bnbademamix8bit', 'bitsandbytes.optim.AdEMAMix8bit', 'EB3', None,
     'bitsandbytes 8-bit AdEMAMix with dynamic quantization'),
    # _register_cautious_optimizers
    ('cadafactor', 'timm.optim.Adafactor', 'EB', {**_CAUTION, 'betas': (0.9, 0.999)}, 'Cautious Adafactor'),
    ('cadafactorbv', 'timm.optim.AdafactorBigVision', 'EM', _CAUTION, 'Cautious Big Vision Adafactor'),
    ('cadamw', 'timm.optim.AdamWLegacy', 'EB', _CAUTION, 'Cautious AdamW'),
    ('cadopt', 'timm.optim.Adopt', 'EB', _CAUTION, 'Cautious Adopt'),
    ('cadan', 'timm.optim.Adan', 'EB3', {**_CAUTION, 'no_prox': False},
     'Cautious Adaptive Nesterov Momentum Algorithm'),
    ('cadanw', 'timm.optim.Adan', 'EB3', {**_CAUTION, 'no_prox': True},
     'Cautious Adaptive Nesterov Momentum with decoupled weight decay'),
    ('cadoptw', 'timm.optim.Adopt', 'EB', {'decoupled': True, **_CAUTION}, 'Cautious AdoptW (decoupled decay)'),
    ('clamb', 'timm.optim.Lamb', 'EB', _CAUTION, 'Cautious LAMB'),
    ('clambw', 'timm.optim.Lamb', 'EB', {**_CAUTION, **_DD}, 'Cautious LAMB with decoupled weight decay'),
    ('claprop', 'timm.optim.LaProp', 'EB', _CAUTION, 'Cautious LaProp'),
    ('clion', 'timm.optim.Lion', 'B', _CAUTION, 'Cautious Lion'),
    ('cmars', 'timm.optim.Mars', 'EB', _CAUTION, 'Cautious MARS'),
    ('cnadamw', 'timm.optim.NAdamW', 'EB', _CAUTION, 'Cautious NAdamW'),
    ('crmsproptf', 'timm.optim.RMSpropTF', 'EM', {'alpha': 0.9, **_CAUTION}, 'Cautious TensorFlow-style RMSprop'),
    ('csgdw', 'timm.optim.SGDW', 'M', {**_NESTEROV, **_CAUTION},
     'Cautious SGD with decoupled weight decay and Nesterov momentum'),
    ('cadamp', 'timm.optim.AdamP', 'EB', {'wd_ratio': 0.01, 'nesterov': True, **_CAUTION},
     'Add the spherical cautious optimizer and the standard cautious optimizer to AdamP'),
    ('csgdp', 'timm.optim.SGDP', 'EM', {**_NESTEROV, **_CAUTION},
     'Add the spherical cautious optimizer and the standard cautious optimizer to SGDP'),
    # _register_corrected_decay_optimizers
    ('adamc', 'timm.optim.AdamWLegacy', 'EB', _CWD, 'AdamW' + _CORRECTED),
    ('nadamc', 'timm.optim.NAdamW', 'EB', _CWD, 'NAdamW' + _CORRECTED),
    ('sgdc', 'timm.optim.SGDW', 'M', {**_NESTEROV, **_CWD},
     'SGD with corrected decoupled weight decay (lr²/max_lr scaling)'),
    ('adoptc', 'timm.optim.Adopt', 'EB', {'decoupled': True, **_CWD},
     'Adopt with corrected decoupled weight decay (lr²/max_lr scaling)'),
    ('lambcd', 'timm.optim.Lamb', 'EB', {**_DD, **_CWD},
     'LAMB with corrected decoupled weight decay (lr²/max_lr scaling)'),
    ('kronc', 'timm.optim.Kron', 'M', {**_DD, **_CWD},
     'PSGD Kron with corrected decoupled weight decay (lr²/max_lr scaling)'),
    ('lionc', 'timm.optim.Lion', 'B', _CWD, 'Lion' + _CORRECTED),
    ('lapropc', 'timm.optim.LaProp', 'EB', _CWD, 'LaProp' + _CORRECTED),
    ('rmsproptfc', 'timm.optim.RMSpropTF', 'EM', {'alpha': 0.9, **_DD, **_CWD},
     'RMSprop TF-style with corrected decoupled weight decay (lr²/max_lr scaling)'),
    ('novogradc', 'timm.optim.NvNovoGrad', 'EB', {**_DD, **_CWD},
     'NovoGrad with corrected decoupled weight decay (lr²/max_lr scaling)'),
    ('adafactorbvc', 'timm.optim.AdafactorBigVision', 'EM', _CWD,
     'Adafactor Big Vision with corrected weight decay (lr²/max_lr or lr/max_lr scaling)'),
    ('cadamc', 'timm.optim.AdamWLegacy', 'EB', {**_CAUTION, **_CWD}, 'Cautious AdamW' + _CORRECTED),
    ('cadoptc', 'timm.optim.Adopt', 'EB', {'decoupled': True, **_CAUTION, **_CWD},
     'Cautious Adopt with corrected decoupled weight decay (lr²/max_lr scaling)'),
    ('cnadamc', 'timm.optim.NAdamW', 'EB', {**_CAUTION, **_CWD}, 'Cautious NAdamW' + _CORRECTED),
    ('csgdc', 'timm.optim.SGDW', 'M', {**_NESTEROV, **_CAUTION, **_CWD},
     'Cautious SGD with corrected decoupled weight decay (lr²/max_lr scaling)'),
    ('clionc', 'timm.optim.Lion', 'B', {**_CAUTION, **_CWD}, 'Cautious Lion' + _CORRECTED),
    ('cadafactorbvc', 'timm.optim.AdafactorBigVision', 'EM', {**_CAUTION, **_CWD},
     'Cautious Adafactor Big Vision with corrected weight decay'),
]
_ALIASES = [('nesterov', 'sgd'), ('nesterovw', 'sgdw')]


def _build_default_registry() -> OptimizerRegistry:
    registry = OptimizerRegistry()
    for name, timm_class, flags, defaults, description in _TABLE:
        info = OptimInfo(name, _CLASSES[timm_class], description=description,
                         has_eps='E' in flags, has_momentum='M' in flags, has_betas='B' in flags,
                         num_betas=3 if '3' in flags else 2, second_order='H' in flags,
                         defaults=dict(defaults) if defaults is not None else None)
        registry.register(info)
    for alias, target in _ALIASES:
        registry.register_alias(alias, target)
    return registry


default_registry = _build_default_registry()
