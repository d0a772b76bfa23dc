"""The functional side of ``bitsandbytes.optim``, with its names, arguments and defaults.

``fo.bitsandbytes.<snake_case of its class>`` is that class's update rule as a transform
(``adam``, ``adam8bit``, ``adamw``, ``adamw8bit``, ``sgd``, ``sgd8bit``, ``lion``,
``lion8bit``, ``ademamix``, ``ademamix8bit``); the 8-bit ones keep their moments as
blockwise 8-bit codes (:func:`functional_optim.quantized_state`). The classes are in
``adapters.bitsandbytes``. bitsandbytes itself is never imported.
"""

from __future__ import annotations

from .aliases.bitsandbytes import (adam, adam8bit, adamw, adamw8bit, ademamix, ademamix8bit, lion, lion8bit,
                                   sgd, sgd8bit)

__all__ = ["adam", "adam8bit", "adamw", "adamw8bit", "ademamix", "ademamix8bit", "lion", "lion8bit",
           "sgd", "sgd8bit"]
