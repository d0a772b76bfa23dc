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
from ._factory import (create_optimizer, create_optimizer_v2, get_optimizer_class, get_optimizer_info,
                       list_optimizers, optimizer_kwargs)
from ._lookahead import Lookahead
from ._param_groups import auto_group_layers, param_groups_layer_decay, param_groups_weight_decay
from ._registry import OptimInfo, OptimizerRegistry

__all__: list[str] = [
    "create_optimizer_v2", "create_optimizer", "optimizer_kwargs", "list_optimizers", "get_optimizer_class",
    "get_optimizer_info", "OptimInfo", "OptimizerRegistry",
    "param_groups_weight_decay", "param_groups_layer_decay", "auto_group_layers", "Lookahead",
    "SGD", "Adam", "AdamW", "NAdam", "RAdam", "Adamax", "Adadelta", "Adagrad", "RMSprop",
]

# optimizer classes: timm's own, one module each (adapters/timm/_<module>.py). Add one line per
# class below, of the form
#     from ._adabelief import AdaBelief; __all__.append("AdaBelief")  # noqa: E702
# (the registry imports them lazily by path, so this block is only for the public namespace)
from ._adabelief import AdaBelief; __all__.append("AdaBelief")  # noqa: E702
from ._adamp import AdamP; __all__.append("AdamP")  # noqa: E702
from ._sgdp import SGDP; __all__.append("SGDP")  # noqa: E702
from ._adamw_legacy import AdamWLegacy; __all__.append("AdamWLegacy")  # noqa: E702
from ._nadam_legacy import NAdamLegacy; __all__.append("NAdamLegacy")  # noqa: E702
from ._radam_legacy import RAdamLegacy; __all__.append("RAdamLegacy")  # noqa: E702
from ._rmsprop_tf import RMSpropTF; __all__.append("RMSpropTF")  # noqa: E702
from ._lamb import Lamb; __all__.append("Lamb")  # noqa: E702
from ._lars import Lars; __all__.append("Lars")  # noqa: E702
from ._nvnovograd import NvNovoGrad; __all__.append("NvNovoGrad")  # noqa: E702
from ._madgrad import MADGRAD; __all__.append("MADGRAD")  # noqa: E702
from ._adafactor import Adafactor; __all__.append("Adafactor")  # noqa: E702
from ._adahessian import Adahessian; __all__.append("Adahessian")  # noqa: E702
