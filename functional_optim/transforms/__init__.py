"""Building-block transforms, grouped by concern (optax's names and arguments)."""

from .accumulators import (ScaleByAdaDeltaState, ScaleByAdamaxState, ScaleByRssState, scale_by_adadelta,
                           scale_by_adamax, scale_by_rss)
from .adaptive import ScaleByAdamState, ScaleByRmsState, scale_by_adam, scale_by_rms, scale_by_stddev
from .adam_variants import ScaleByNadamState, scale_by_nadam, scale_by_radam
from .adding import add_decayed_weights
from .averaging import ScaleByAsgdState, scale_by_asgd
from .centering import centralize
from .clipping import ClipByGlobalNormState, adaptive_grad_clip, clip, clip_by_block_rms, clip_by_global_norm
from .momentum import EmaState, TraceState, ema, trace
from .noise import AddNoiseState, add_noise
from .norm_scaling import scale_by_trust_ratio
from .novograd import ScaleByNovogradState, scale_by_novograd
from .numerics import NonNegativeParamsState, ZeroNansState, keep_params_nonnegative, zero_nans
from .sign_based import ScaleByRpropState, scale_by_rprop
from .sparse import ScaleBySparseAdamState, SparseRows, scale_by_sparse_adam
from .scaling import (ScaleByScheduleState, scale, scale_by_learning_rate, scale_by_schedule,
                      scale_by_sign)
from .layerwise_adaptive import (ScaleByLambMomentsState, divide_by_global_norm, scale_by_lamb_moments,
                                 scale_by_lamb_trust_ratio, scale_by_lars_trust_ratio)
from .weight_decay import add_decoupled_weight_decay, add_decoupled_weight_decay_after_step
from .timm_adam import (ScaleByBeliefState, ScaleByNadamLegacyState, scale_by_belief, scale_by_nadam_legacy,
                        scale_by_timm_adam, trace_from_zero)
from .madgrad import ScaleByMadgradState, scale_by_madgrad
from .apex_fused import (ScaleByApexMomentsState, ScaleByApexNovogradState, scale_by_apex_moments,
                         scale_by_apex_novograd)
from .low_precision_params import (KahanSummationState, StochasticRoundingUpdatesState, kahan_summation,
                                   stochastic_rounding_updates)
from .factored import ScaleByFactoredRmsState, scale_by_factored_rms
from .relative_step import (AddRelativeStepDecayedWeightsState, ScaleByRelativeStepSizeState,
                            add_relative_step_decayed_weights, scale_by_relative_step_size)
from .adahessian import ScaleByAdahessianState, scale_by_adahessian
from .factored_variance import ScaleByFactoredVarianceState, scale_by_factored_variance
from .newton_schulz import orthogonalize_newton_schulz
from .shape_scaling import scale_by_shape_adjusted_lr
from .adan import ScaleByAdanState, scale_by_adan
from .adopt import scale_by_adopt
from .weight_decay import add_proximal_weight_decay
from .newton_schulz_timm import orthogonalize_newton_schulz_timm
from .muon_scaling import ScaleByAdamuonState, scale_by_adamuon, scale_by_muon_shape
from .factored_big_vision import (ScaleByFactoredRmsBigVisionState, big_vision_factor_dims, ema_in_dtype,
                                  scale_by_factored_rms_big_vision)
from .lion import ScaleByLionState, scale_by_lion
from .ademamix import ScaleByAdemamixState, scale_by_ademamix
from .laprop import ScaleByLapropState, scale_by_laprop
from .mars import MarsGradientCorrectionState, mars_gradient_correction
from .kron import ScaleByKronState, scale_by_kron

__all__ = [
    "ScaleByAdaDeltaState", "ScaleByAdamaxState", "ScaleByRssState", "scale_by_adadelta",
    "scale_by_adamax", "scale_by_rss",
    "ScaleByAdamState", "ScaleByRmsState", "scale_by_adam", "scale_by_rms", "scale_by_stddev",
    "add_decayed_weights",
    "ScaleByNadamState", "scale_by_nadam", "scale_by_radam", "ScaleByAsgdState", "scale_by_asgd",
    "ScaleByRpropState", "scale_by_rprop",
    "ScaleBySparseAdamState", "SparseRows", "scale_by_sparse_adam",
    "ClipByGlobalNormState", "clip", "clip_by_global_norm", "clip_by_block_rms", "adaptive_grad_clip",
    "centralize", "AddNoiseState", "add_noise", "scale_by_trust_ratio",
    "ScaleByNovogradState", "scale_by_novograd",
    "ZeroNansState", "NonNegativeParamsState", "zero_nans", "keep_params_nonnegative",
    "EmaState", "TraceState", "ema", "trace",
    "ScaleByScheduleState", "scale", "scale_by_learning_rate", "scale_by_schedule", "scale_by_sign",
    "ScaleByLambMomentsState", "divide_by_global_norm", "scale_by_lamb_moments", "scale_by_lamb_trust_ratio",
    "scale_by_lars_trust_ratio", "add_decoupled_weight_decay", "add_decoupled_weight_decay_after_step",
    "ScaleByBeliefState", "ScaleByNadamLegacyState", "scale_by_belief", "scale_by_nadam_legacy",
    "scale_by_timm_adam", "trace_from_zero",
    "ScaleByApexMomentsState", "ScaleByApexNovogradState", "scale_by_apex_moments", "scale_by_apex_novograd",
    "KahanSummationState", "StochasticRoundingUpdatesState", "kahan_summation", "stochastic_rounding_updates",
    "ScaleByMadgradState", "scale_by_madgrad", "ScaleByFactoredRmsState", "scale_by_factored_rms",
    "AddRelativeStepDecayedWeightsState", "ScaleByRelativeStepSizeState", "add_relative_step_decayed_weights",
    "scale_by_relative_step_size", "ScaleByAdahessianState", "scale_by_adahessian",
    "ScaleByFactoredVarianceState", "scale_by_factored_variance", "orthogonalize_newton_schulz",
    "scale_by_shape_adjusted_lr",
    "ScaleByFactoredRmsBigVisionState", "big_vision_factor_dims", "ema_in_dtype", "scale_by_factored_rms_big_vision",
    "orthogonalize_newton_schulz_timm", "ScaleByAdamuonState", "scale_by_adamuon", "scale_by_muon_shape",
]
__all__ += ["ScaleByLionState", "scale_by_lion"]
__all__ += ["ScaleByLapropState", "scale_by_laprop"]
__all__ += ["MarsGradientCorrectionState", "mars_gradient_correction"]
__all__ += ["ScaleByAdanState", "scale_by_adan", "scale_by_adopt", "add_proximal_weight_decay"]
__all__ += ["ScaleByKronState", "scale_by_kron"]
__all__ += ["ScaleByAdemamixState", "scale_by_ademamix"]
