"""The functional side of ``timm.optim``, with timm's names, arguments and defaults.

``fo.timm.<snake_case of timm's class>`` is that class's update rule as a transform
(``fo.timm.lamb``, ``fo.timm.adabelief``, ``fo.timm.rmsprop_tf``, ...). The
``torch.optim`` classes, ``create_optimizer_v2`` and the registry are in
``adapters.timm``. timm itself is never imported.
"""

from __future__ import annotations

from .aliases.timm_adam_family import (adabelief, adamp, adamw_legacy, nadam_legacy, radam_legacy,
                                      rmsprop_tf, sgdp)
from .aliases.timm_layerwise import lamb, lars, nvnovograd
from .aliases.timm_misc import adafactor, adahessian, madgrad
from .aliases.timm_adan import adan
from .aliases.timm_adopt import adopt
from .aliases.timm_nadamw import nadamw
from .aliases.timm_sgdw import sgdw
from .aliases.timm_adafactor_big_vision import adafactor_big_vision
from .aliases.timm_muon import muon
from .aliases.timm_lion import lion
from .aliases.timm_laprop import laprop
from .aliases.timm_mars import mars
from .aliases.timm_kron import kron

__all__ = ["adabelief", "adafactor", "adahessian", "adamp", "adamw_legacy", "lamb", "lars", "madgrad",
           "nadam_legacy", "nvnovograd", "radam_legacy", "rmsprop_tf", "sgdp"]
__all__ += ["adafactor_big_vision", "muon"]
__all__ += ["lion"]
__all__ += ["laprop"]
__all__ += ["mars"]
__all__ += ["adan", "adopt", "nadamw", "sgdw"]
__all__ += ["kron"]
