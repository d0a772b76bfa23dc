"""``timm.optim`` on the functional engine: ``from adapters import timm as optim`` (or
``import adapters.timm``) replaces ``import timm.optim``.

The factory (``create_optimizer_v2``, ``create_optimizer``), the registry
(``list_optimizers``, ``get_optimizer_class``, ``get_optimizer_info``), the param-group
helpers, ``Lookahead`` and the optimizer classes under timm's names and signatures. Every
optimizer is a ``torch.optim.Optimizer`` running the functional core
(``fo.timm.<name>``). timm itself is never imported.
"""

from __future__ import annotations

# torch.optim's classes, which timm.optim re-exports: the adapters' drop-ins
from ..torch_optim import SGD, Adadelta, Adagrad, Adam, Adamax, AdamW, NAdam, RAdam, RMSprop
from ._adabelief import AdaBelief
from ._adafactor import Adafactor
from ._adafactor_bv import AdafactorBigVision
from ._adahessian import Adahessian
from ._adamp import AdamP
from ._adamw_legacy import AdamWLegacy
from ._factory import (create_optimizer, create_optimizer_v2, get_optimizer_class, get_optimizer_info,
                       list_optimizers, optimizer_kwargs)
from ._lamb import Lamb
from ._lars import Lars
from ._lion import Lion
from ._laprop import LaProp
from ._mars import Mars
from ._lookahead import Lookahead
from ._madgrad import MADGRAD
from ._muon import Muon
from ._nadam_legacy import NAdamLegacy
from ._nvnovograd import NvNovoGrad
from ._param_groups import auto_group_layers, param_groups_layer_decay, param_groups_weight_decay
from ._radam_legacy import RAdamLegacy
from ._registry import OptimInfo, OptimizerRegistry
from ._rmsprop_tf import RMSpropTF
from ._sgdp import SGDP
from ._adan import Adan
from ._adopt import Adopt
from ._nadamw import NAdamW
from ._sgdw import SGDW
from ._kron import Kron  # timm.optim does not export it (its registry does: timm.optim.kron.Kron)

__all__ = [
    "create_optimizer_v2", "create_optimizer", "optimizer_kwargs", "list_optimizers", "get_optimizer_class",
    "get_optimizer_info", "OptimInfo", "OptimizerRegistry",
    "param_groups_weight_decay", "param_groups_layer_decay", "auto_group_layers", "Lookahead",
    # timm's own classes (the registry imports them lazily by path)
    "AdaBelief", "Adafactor", "Adahessian", "AdamP", "AdamWLegacy", "Lamb", "Lars", "MADGRAD",
    "NAdamLegacy", "NvNovoGrad", "RAdamLegacy", "RMSpropTF", "SGDP",
    # torch.optim's, re-exported as timm.optim does
    "SGD", "Adam", "AdamW", "NAdam", "RAdam", "Adamax", "Adadelta", "Adagrad", "RMSprop",
]
__all__ += ["Lion"]
__all__ += ["LaProp"]
__all__ += ["Mars"]
__all__ += ["AdafactorBigVision"]
__all__ += ["Adan", "Adopt", "NAdamW", "SGDW"]
__all__ += ["Kron"]
__all__ += ["Muon"]
