"""Optimizers and learning-rate schedules."""

from xlafw.optim.adamw import AdamW, clip_grad_norm
from xlafw.optim.schedules import Constant, WarmupCosine

__all__ = ["AdamW", "Constant", "WarmupCosine", "clip_grad_norm"]
