"""The functional side of ``apex.optimizers``, with apex's names, arguments and defaults.

``fo.apex.<snake_case of apex's class>`` is that class's update rule as a transform
(``fo.apex.fused_adam``, ``fused_lamb``, ``fused_sgd``, ``fused_novograd``); the classes
are in ``adapters.apex``. apex itself is never imported, and nothing here needs CUDA.
"""

from __future__ import annotations

from .aliases.apex_fused import fused_adam, fused_lamb, fused_novograd, fused_sgd

__all__ = ["fused_adam", "fused_lamb", "fused_novograd", "fused_sgd"]
