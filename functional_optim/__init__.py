"""functional_optim: optax-style functional optimizers for PyTorch.

Every optimizer is a pure :class:`GradientTransformation` ``(init, update)`` over pytrees
of tensors, built by chaining small transforms::

    import functional_optim as fo
    opt = fo.chain(fo.clip_by_global_norm(1.0), fo.adamw(lr=1e-3))
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    params = fo.apply_updates(params, updates)
"""

from . import _compat  # noqa: F401  (torch workarounds, applied at import)
from . import kernels, segments, tree
from .aliases import adam, adamw, sgd
from .aliases import adadelta, adagrad, adamax, rmsprop
from .aliases import asgd, nadam, radam, rprop
from . import linesearch
from . import implicit
from .implicit import custom_root, hvp, solve_cg, solve_normal_cg, stationary_point
from .aliases import LBFGSState, lbfgs, sparse_adam
from .aliases import adafactor, muon  # torch.optim's (timm's Adafactor is fo.timm.adafactor)
from .aliases import novograd  # torch.optim has no Novograd: the name is free at top level
from .base import (EmptyState, GradientTransformation, OptState, Params, Schedule, ScalarOrSchedule,
                   Updates, identity, is_elementwise, mark_elementwise, set_to_zero, Needs, declare, needs,
                   stateless)
from .combine import chain, named_chain
from .transforms import (ClipByGlobalNormState, EmaState, ScaleByAdamState, ScaleByRmsState,
                         ScaleByScheduleState, TraceState, add_decayed_weights, clip,
                         clip_by_global_norm, ema, scale, scale_by_adam, scale_by_learning_rate,
                         scale_by_rms, scale_by_schedule, scale_by_sign, trace)
from .transforms import (ScaleByAdaDeltaState, ScaleByAdamaxState, ScaleByRssState, scale_by_adadelta,
                         scale_by_adamax, scale_by_rss, scale_by_stddev)
from .transforms import (ScaleByAsgdState, ScaleByNadamState, ScaleByRpropState, scale_by_asgd,
                         scale_by_nadam, scale_by_radam, scale_by_rprop)
from .transforms import ScaleBySparseAdamState, SparseRows, scale_by_sparse_adam
from .transforms import ScaleByNovogradState, scale_by_novograd
from .transforms import (AddNoiseState, NonNegativeParamsState, ZeroNansState, adaptive_grad_clip,
                         add_noise, centralize, clip_by_block_rms, keep_params_nonnegative,
                         scale_by_trust_ratio, zero_nans)
from . import wrappers
from .wrappers import (apply_if_finite, ApplyIfFiniteState, conditionally_mask,
                       conditionally_transform, ConditionallyMaskState, ConditionallyTransformState,
                       ema_params, freeze, inject_hyperparams, InjectHyperparamsState,
                       label_by_name, leaf_names, lookahead, lookahead_slow_params, LookaheadState,
                       mask_by_name, masked, MaskedState, measure_with_ema, monitor, MonitorState,
                       multi_transform, MultiSteps, MultiStepsState, MultiTransformState, param_ema,
                       ParamEmaState, partition, PartitionState, selective_transform,
                       skip_large_updates, skip_not_finite, snapshot, SnapshotState)
from .updates import apply_updates, apply_updates_
from . import monai  # monai.optimizers' functional side (MONAI is never imported)
from . import timm  # timm.optim's functional side (timm is never imported)
# torch.optim has no optimizer of these names: timm's at top level
from .timm import adabelief, adahessian, adamp, lamb, lars, madgrad, nvnovograd, sgdp
from . import optax  # optax's aliases whose top-level names are timm's (fo.optax.lamb, fo.optax.lars)
from . import apex  # apex.optimizers' functional side (apex is never imported)
from .transforms import (KahanSummationState, StochasticRoundingUpdatesState, kahan_summation,
                         stochastic_rounding_updates)
from .wrappers import Bf16State, bf16_state
from .transforms import (ScaleByApexMomentsState, ScaleByApexNovogradState, scale_by_apex_moments,
                         scale_by_apex_novograd)
from .transforms import (AddRelativeStepDecayedWeightsState, ScaleByAdahessianState, ScaleByBeliefState,
                         ScaleByFactoredRmsState, ScaleByLambMomentsState, ScaleByMadgradState,
                         ScaleByNadamLegacyState, ScaleByRelativeStepSizeState, add_decoupled_weight_decay,
                         add_relative_step_decayed_weights, divide_by_global_norm, scale_by_adahessian,
                         scale_by_belief, scale_by_factored_rms, scale_by_lamb_moments,
                         scale_by_lamb_trust_ratio, scale_by_lars_trust_ratio, scale_by_madgrad,
                         scale_by_nadam_legacy, scale_by_relative_step_size, scale_by_timm_adam,
                         trace_from_zero)
from .wrappers import cautious, scale_invariant_projection
from .transforms import ScaleByAdanState, add_proximal_weight_decay, scale_by_adan, scale_by_adopt
from .timm import adan, adopt, nadamw, sgdw  # timm's (torch.optim has none of these names)
from .transforms import (ScaleByFactoredVarianceState, orthogonalize_newton_schulz, scale_by_factored_variance,
                         scale_by_shape_adjusted_lr)
from .transforms import ScaleByLionState, scale_by_lion
from .timm import lion  # timm's (torch.optim has no Lion)
from .transforms import ScaleByLapropState, add_decoupled_weight_decay_after_step, scale_by_laprop
from .timm import laprop
from .transforms import MarsGradientCorrectionState, mars_gradient_correction
from .timm import mars
from .timm import kron  # timm's (torch.optim has no Kron)
from . import bitsandbytes, quantization  # bitsandbytes.optim's functional side (never imported)
from .transforms import ScaleByAdemamixState, scale_by_ademamix
from .wrappers import QuantizationMaps, QuantizedState, dequantize_state, quantize_state, quantized_state
from .transforms import (ScaleByFactoredRmsBigVisionState, big_vision_factor_dims, ema_in_dtype,
                         scale_by_factored_rms_big_vision)
from .transforms import (ScaleByAdamuonState, orthogonalize_newton_schulz_timm, scale_by_adamuon,
                         scale_by_muon_shape)
from .schedules import (constant_schedule, cosine_decay_schedule, cosine_onecycle_schedule,
                        exponential_decay, exponential_range_schedule, join_schedules,
                        linear_onecycle_schedule, linear_range_schedule, linear_schedule,
                        piecewise_constant_schedule, piecewise_interpolate_schedule,
                        polynomial_schedule, sgdr_schedule, warmup_constant_schedule,
                        warmup_cosine_decay_schedule, warmup_cosine_schedule,
                        warmup_exponential_decay_schedule)

__version__ = "0.1.0"

__all__ = [
    "kernels", "segments", "tree",
    "GradientTransformation", "EmptyState", "Params", "Updates", "OptState", "Schedule",
    "ScalarOrSchedule", "identity", "stateless", "set_to_zero", "mark_elementwise", "is_elementwise", "Needs", "declare", "needs",
    "chain", "named_chain", "apply_updates", "apply_updates_",
    "scale", "scale_by_learning_rate", "scale_by_schedule", "scale_by_sign",
    "add_decayed_weights", "clip", "clip_by_global_norm", "trace", "ema",
    "scale_by_adam", "scale_by_rms",
    "ScaleByScheduleState", "ClipByGlobalNormState", "TraceState", "EmaState",
    "ScaleByAdamState", "ScaleByRmsState",
    "sgd", "adam", "adamw",
    "scale_by_stddev", "scale_by_rss", "scale_by_adadelta", "scale_by_adamax",
    "ScaleByRssState", "ScaleByAdaDeltaState", "ScaleByAdamaxState",
    "rmsprop", "adagrad", "adadelta", "adamax",
    "scale_by_nadam", "scale_by_radam", "scale_by_asgd", "scale_by_rprop",
    "ScaleByNadamState", "ScaleByAsgdState", "ScaleByRpropState",
    "nadam", "radam", "asgd", "rprop", "lamb", "lars",
    "implicit", "custom_root", "stationary_point", "hvp", "solve_cg", "solve_normal_cg",
    "linesearch", "lbfgs", "LBFGSState", "sparse_adam", "scale_by_sparse_adam",
    "ScaleBySparseAdamState", "SparseRows",
    "monai", "novograd", "scale_by_novograd", "ScaleByNovogradState",
    "apex", "ScaleByApexMomentsState", "ScaleByApexNovogradState", "scale_by_apex_moments",
    "scale_by_apex_novograd",
    "Bf16State", "bf16_state", "KahanSummationState", "StochasticRoundingUpdatesState", "kahan_summation",
    "stochastic_rounding_updates",
    "timm", "optax", "nvnovograd", "ScaleByLambMomentsState", "add_decoupled_weight_decay", "divide_by_global_norm",
    "scale_by_lamb_moments", "scale_by_lamb_trust_ratio", "scale_by_lars_trust_ratio",
    "adabelief", "adamp", "sgdp", "ScaleByBeliefState", "ScaleByNadamLegacyState", "scale_by_belief",
    "scale_by_nadam_legacy", "scale_by_timm_adam", "trace_from_zero",
    "madgrad", "adahessian", "scale_by_madgrad", "scale_by_factored_rms", "scale_by_relative_step_size",
    "add_relative_step_decayed_weights", "scale_by_adahessian", "ScaleByMadgradState",
    "ScaleByFactoredRmsState", "ScaleByRelativeStepSizeState", "AddRelativeStepDecayedWeightsState",
    "ScaleByAdahessianState",
    "adafactor", "muon", "scale_by_factored_variance", "ScaleByFactoredVarianceState",
    "orthogonalize_newton_schulz", "scale_by_shape_adjusted_lr",
    "ScaleByFactoredRmsBigVisionState", "big_vision_factor_dims", "ema_in_dtype", "scale_by_factored_rms_big_vision",
    "ScaleByAdamuonState", "orthogonalize_newton_schulz_timm", "scale_by_adamuon", "scale_by_muon_shape",
    "AddNoiseState", "NonNegativeParamsState", "ZeroNansState", "adaptive_grad_clip", "add_noise",
    "centralize", "clip_by_block_rms", "keep_params_nonnegative", "scale_by_trust_ratio", "zero_nans",
    "lion", "scale_by_lion", "ScaleByLionState",
    "laprop", "scale_by_laprop", "ScaleByLapropState", "add_decoupled_weight_decay_after_step",
    "mars", "mars_gradient_correction", "MarsGradientCorrectionState",
    "kron",
    "bitsandbytes", "quantization", "scale_by_ademamix", "ScaleByAdemamixState",
    "adan", "adopt", "nadamw", "sgdw", "ScaleByAdanState", "add_proximal_weight_decay", "scale_by_adan",
    "scale_by_adopt",
    "wrappers", *wrappers.__all__,
    "constant_schedule", "linear_schedule", "polynomial_schedule", "exponential_decay",
    "piecewise_constant_schedule", "piecewise_interpolate_schedule",
    "cosine_decay_schedule", "warmup_cosine_decay_schedule", "sgdr_schedule",
    "warmup_constant_schedule", "warmup_exponential_decay_schedule",
    "linear_onecycle_schedule", "cosine_onecycle_schedule", "join_schedules",
    "warmup_cosine_schedule", "linear_range_schedule", "exponential_range_schedule",
]
