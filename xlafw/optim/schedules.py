"""Learning-rate schedules as functions of a device step tensor.

A schedule maps the 1-based step (a tensor on the XLA device) to a multiplier
of the peak learning rate, with tensor ops only. The learning rate therefore
changes every step without ever becoming a Python float baked into the graph,
which would recompile the step (torchprime PR #319).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from xlafw.arguments import MAX_STEPS, integer, number, raise_invalid


@dataclasses.dataclass(frozen=True)
class Constant:
    """The peak learning rate at every step."""

    def __call__(self, step: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(step, dtype=torch.float32)


@dataclasses.dataclass(frozen=True)
class WarmupCosine:
    """Linear warm-up from 0 to the peak, then cosine decay to a floor.

    Attributes:
      total_steps: the step at which the decay reaches ``min_ratio``; the
        trainer fills it with ``trainer.max_steps``.
      warmup_steps: steps of linear warm-up; step 1 runs at ``1/warmup_steps``
        of the peak.
      min_ratio: the floor, as a fraction of the peak.

    A warm-up longer than ``total_steps`` is allowed (a short test run of a
    long recipe): the run then ends before the peak.
    """

    total_steps: int
    warmup_steps: int = 100
    min_ratio: float = 0.1

    def __post_init__(self):
        raise_invalid(
            integer(
                "total_steps",
                self.total_steps,
                at_least=1,
                at_most=MAX_STEPS,
                fix="the trainer fills it with trainer.max_steps.",
            ),
            integer(
                "warmup_steps",
                self.warmup_steps,
                at_least=0,
                at_most=MAX_STEPS,
                fix="0 for no warm-up (steps count in float32, exact up to 2**24).",
            ),
            number(
                "min_ratio",
                self.min_ratio,
                at_least=0,
                at_most=1,
                fix="the final LR as a fraction of the peak, e.g. 0.1.",
            ),
        )

    def __call__(self, step: torch.Tensor) -> torch.Tensor:
        step = step.float()
        warmup = max(self.warmup_steps, 1)
        decay_span = max(self.total_steps - self.warmup_steps, 1)
        progress = ((step - self.warmup_steps) / decay_span).clamp(0.0, 1.0)
        cosine = self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + torch.cos(math.pi * progress))
        return torch.where(step < self.warmup_steps, step / warmup, cosine)
