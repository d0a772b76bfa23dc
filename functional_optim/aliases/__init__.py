"""Optimizer aliases: each a few lines chaining transforms, one module per family."""

from .adadelta import adadelta
from .adagrad import adagrad
from .adam import adam, adamw
from .adamax import adamax
from .rmsprop import rmsprop
from .sgd import sgd

__all__ = ["adam", "adamw", "sgd", "rmsprop", "adagrad", "adadelta", "adamax"]
