"""The stateful PyTorch side of functional_optim.

``FunctionalOptimizer`` turns any transform (or transform factory) into a
``torch.optim.Optimizer``; ``SGD``, ``Adam``, ``AdamW`` are drop-in replacements for
torch's classes, with their signatures and state_dict format.
"""

from . import monai  # monai.optimizers' drop-ins: Novograd, generate_param_groups, ...
from . import timm  # timm.optim's factory, registry, Lookahead and classes: create_optimizer_v2, ...
from .lr_finder import LearningRateFinder
from .lbfgs import LBFGS
from .optimizer import FunctionalOptimizer
from .schedulers import ExponentialLR, LinearLR, ScheduleLR, WarmupCosineSchedule
from .torch_optim import (ASGD, SGD, Adadelta, Adagrad, Adam, Adamax, AdamW, NAdam, RAdam, RMSprop, Rprop,
                          SparseAdam)
from .torch_optim_matrix import Adafactor, Muon

__all__ = ["FunctionalOptimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax",
           "NAdam", "RAdam", "ASGD", "Rprop", "SparseAdam", "LBFGS", "Adafactor", "Muon",
           "ScheduleLR", "WarmupCosineSchedule", "LinearLR", "ExponentialLR", "LearningRateFinder"]
