"""Step metrics: read on the host in step closures, written to log sinks.

The trainer hands device tensors to ``StepLogger.on_step`` through
``xm.add_step_closure``; values are read there, after the step's graph ran, so
logging never adds a graph or a recompilation. Throughput is measured between
consecutive logged steps (wall clock), which on an asynchronous device is the
rate the device completes steps.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from typing import IO

import torch

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StepMetrics:
    """One logged step.

    Attributes:
      step: 1-based optimizer step.
      loss: mean loss over the steps since the previous log line.
      grad_norm: global gradient norm before clipping.
      lr: learning rate used by the step.
      tokens_per_s: tokens per second over the steps since the last log.
      step_time_s: seconds per step over the same window.
      tokens_seen: tokens trained on so far.
      compiles: XLA compilations so far in this process.
      epoch: fractional epoch, when the epoch length is known.
    """

    step: int
    loss: float
    grad_norm: float
    lr: float
    tokens_per_s: float
    step_time_s: float
    tokens_seen: int
    compiles: int
    epoch: float | None = None

    def human(self, max_steps: int) -> str:
        eta = (max_steps - self.step) * self.step_time_s
        epoch = f" epoch {self.epoch:.2f} |" if self.epoch is not None else ""
        return (
            f"step {self.step:>5}/{max_steps} |{epoch} loss {self.loss:.4f} | "
            f"grad_norm {self.grad_norm:.3f} | lr {self.lr:.2e} | "
            f"{self.tokens_per_s:,.0f} tok/s | {self.step_time_s:.3f} s/step | "
            f"compiles {self.compiles} | eta {eta / 60:.1f} min"
        )


class StepLogger:
    """Turns device tensors into ``StepMetrics`` and writes them out.

    Args:
      tokens_per_step: global tokens consumed by one step.
      max_steps: the run's last step, for the ETA.
      steps_per_epoch: for the logged epoch; None if unknown.
      jsonl: an open file receiving one JSON object per logged step, or None.
      compile_counter: returns the compilations so far.
    """

    def __init__(
        self,
        tokens_per_step: int,
        max_steps: int,
        steps_per_epoch: int | None,
        jsonl: IO[str] | None,
        compile_counter,
    ):
        self.tokens_per_step = tokens_per_step
        self.max_steps = max_steps
        self.steps_per_epoch = steps_per_epoch
        self.jsonl = jsonl
        self.compile_counter = compile_counter
        self.history: list[StepMetrics] = []
        self._last: tuple[int, float] | None = None
        self._window: list[torch.Tensor] = []

    def start(self, step: int) -> None:
        """Marks the wall-clock origin for throughput (the step before the first)."""
        self._last = (step, time.perf_counter())

    def record(self, loss: torch.Tensor) -> None:
        """Keeps a step's loss tensor for the next log line; reads nothing."""
        self._window.append(loss)

    def on_step(self, step: int, aux: dict[str, torch.Tensor]) -> None:
        """Reads the logging window's values; runs in a step closure.

        The logged loss is the mean over every step since the last log line, so
        it is not one batch's noise; grad norm and lr are this step's.
        """
        now = time.perf_counter()
        last_step, last_time = self._last or (step - 1, now)
        self._last = (step, now)
        steps = max(step - last_step, 1)
        elapsed = max(now - last_time, 1e-9)
        losses = [t.item() for t in self._window]
        self._window.clear()
        metrics = StepMetrics(
            step=step,
            loss=sum(losses) / len(losses),
            grad_norm=aux["grad_norm"].item(),
            lr=aux["lr"].item(),
            tokens_per_s=steps * self.tokens_per_step / elapsed,
            step_time_s=elapsed / steps,
            tokens_seen=step * self.tokens_per_step,
            compiles=self.compile_counter(),
            epoch=step / self.steps_per_epoch if self.steps_per_epoch else None,
        )
        self.history.append(metrics)
        log.info(metrics.human(self.max_steps))
        if self.jsonl is not None:
            self.jsonl.write(json.dumps(dataclasses.asdict(metrics)) + "\n")
            self.jsonl.flush()
        if not math.isfinite(metrics.loss):
            raise FloatingPointError(
                f"loss is {metrics.loss} at step {step}; stopping. Lower the learning "
                f"rate or check the data."
            )
