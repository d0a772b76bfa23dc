"""Wrappers: transforms that route, gate, accumulate or observe other transforms.

One module per concern: ``masking`` and ``partition`` (which leaves a transform sees, with
``labels`` resolving trees, callables and name globs), ``injection`` (hyperparameters in
state), ``accumulation`` (``MultiSteps``), ``finite`` (``apply_if_finite``), ``conditional``,
``lookahead``, ``param_ema`` and ``monitoring``.
"""

from .accumulation import MultiSteps, MultiStepsState, skip_large_updates, skip_not_finite
from .caution import cautious
from .low_precision_state import Bf16State, bf16_state
from .projection import scale_invariant_projection
from .quantized_state import (QuantizationMaps, QuantizedState, dequantize_state, quantize_state,
                              quantized_state)
from .conditional import (ConditionallyMaskState, ConditionallyTransformState, conditionally_mask,
                          conditionally_transform)
from .finite import ApplyIfFiniteState, apply_if_finite
from .injection import InjectHyperparamsState, inject_hyperparams
from .labels import label_by_name, leaf_names, mask_by_name
from .lookahead import LookaheadState, lookahead, lookahead_slow_params
from .masking import MaskedState, freeze, masked
from .monitoring import MonitorState, SnapshotState, measure_with_ema, monitor, snapshot
from .param_ema import ParamEmaState, ema_params, param_ema
from .partition import MultiTransformState, PartitionState, multi_transform, partition, selective_transform

__all__ = [
    "MultiSteps", "MultiStepsState", "skip_large_updates", "skip_not_finite",
    "Bf16State", "bf16_state",
    "ConditionallyMaskState", "ConditionallyTransformState", "conditionally_mask", "conditionally_transform",
    "ApplyIfFiniteState", "apply_if_finite",
    "InjectHyperparamsState", "inject_hyperparams",
    "label_by_name", "leaf_names", "mask_by_name",
    "LookaheadState", "lookahead", "lookahead_slow_params",
    "MaskedState", "freeze", "masked",
    "MonitorState", "SnapshotState", "measure_with_ema", "monitor", "snapshot",
    "ParamEmaState", "ema_params", "param_ema",
    "MultiTransformState", "PartitionState", "multi_transform", "partition", "selective_transform",
    "cautious", "scale_invariant_projection",
    "QuantizationMaps", "QuantizedState", "dequantize_state", "quantize_state", "quantized_state",
]
