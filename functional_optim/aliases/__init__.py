"""Optimizer aliases: each a few lines chaining transforms, one module per family."""

from .adam import adam, adamw
from .sgd import sgd

__all__ = ["adam", "adamw", "sgd"]
