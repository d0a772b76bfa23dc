"""Optimizer aliases: each a few lines chaining transforms, one module per family."""

from .adadelta import adadelta
from .adafactor import adafactor
from .adagrad import adagrad
from .adam import adam, adamw
from .adamax import adamax
from .asgd import asgd
from .lbfgs import LBFGSState, lbfgs
from .muon import muon
from .nadam import nadam
from .novograd import novograd
from .radam import radam
from .rmsprop import rmsprop
from .rprop import rprop
from .sgd import sgd
from .sparse_adam import sparse_adam

__all__ = ["adam", "adamw", "sgd", "rmsprop", "adagrad", "adadelta", "adamax",
           "nadam", "radam", "asgd", "rprop",
           "lbfgs", "LBFGSState", "sparse_adam", "novograd", "adafactor", "muon"]
