"""Building-block transforms, grouped by concern (optax's names and arguments)."""

from .adaptive import ScaleByAdamState, ScaleByRmsState, scale_by_adam, scale_by_rms
from .adding import add_decayed_weights
from .clipping import ClipByGlobalNormState, clip, clip_by_global_norm
from .momentum import EmaState, TraceState, ema, trace
from .scaling import (ScaleByScheduleState, scale, scale_by_learning_rate, scale_by_schedule,
                      scale_by_sign)

__all__ = [
    "ScaleByAdamState", "ScaleByRmsState", "scale_by_adam", "scale_by_rms",
    "add_decayed_weights",
    "ClipByGlobalNormState", "clip", "clip_by_global_norm",
    "EmaState", "TraceState", "ema", "trace",
    "ScaleByScheduleState", "scale", "scale_by_learning_rate", "scale_by_schedule", "scale_by_sign",
]
