"""Optimizers, learning-rate schedules and what the trainer needs of an optimizer."""

from xlafw.optim.adamw import AdamW, clip_grad_norm
from xlafw.optim.contract import TrainableOptimizer, state_tensors_per_parameter
from xlafw.optim.schedules import Constant, WarmupCosine

__all__ = [
    "AdamW",
    "Constant",
    "TrainableOptimizer",
    "WarmupCosine",
    "clip_grad_norm",
    "state_tensors_per_parameter",
]
