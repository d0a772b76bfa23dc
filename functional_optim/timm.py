"""The functional side of ``timm.optim``, with timm's names, arguments and defaults.

``fo.timm.<snake_case of timm's class>`` is that class's update rule as a transform
(``fo.timm.lamb``, ``fo.timm.adabelief``, ``fo.timm.rmsprop_tf``, ...). The
``torch.optim`` classes, ``create_optimizer_v2`` and the registry are in
``adapters.timm``. timm itself is never imported.
"""

from __future__ import annotations

__all__: list[str] = []

from .aliases.timm_layerwise import lamb, lars, nvnovograd  # timm.optim.Lamb, Lars, NvNovoGrad
__all__ += ["lamb", "lars", "nvnovograd"]
from .aliases.timm_adam_family import (adabelief, adamp, adamw_legacy, nadam_legacy, radam_legacy,  # noqa: E402
                                      rmsprop_tf, sgdp)  # timm.optim's Adam family
__all__ += ["adabelief", "adamp", "sgdp", "adamw_legacy", "nadam_legacy", "radam_legacy", "rmsprop_tf"]
from .aliases.timm_misc import adafactor, adahessian, madgrad  # noqa: E402  (timm.optim.Adafactor, Adahessian, MADGRAD)
__all__ += ["madgrad", "adafactor", "adahessian"]
