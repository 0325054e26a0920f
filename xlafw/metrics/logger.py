"""StepLogger: a logged step's device tensors, read in a step closure, to records and sinks."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import torch

from xlafw.metrics.records import EvalMetrics, StepMetrics

log = logging.getLogger(__name__)


class StepLogger:
    """Turns a step's device tensors into ``StepMetrics`` and writes them to sinks.

    Args:
      tokens_per_step: global tokens consumed by one step.
      max_steps: the run's last step, for the ETA.
      steps_per_epoch: for the logged epoch; None if unknown.
      num_devices: devices sharing the work, for per-device throughput.
      flops_per_token: model FLOPs (forward + backward) per token.
      peak_flops: peak FLOP/s of all devices together.
      sinks: called with every ``StepMetrics``.
      compile_counter: returns the compilations so far.
    """

    def __init__(
        self,
        tokens_per_step: int,
        max_steps: int,
        steps_per_epoch: int | None,
        num_devices: int,
        flops_per_token: int,
        peak_flops: float,
        sinks: list[Callable[[StepMetrics | EvalMetrics], None]],
        compile_counter: Callable[[], int],
    ):
        self.tokens_per_step = tokens_per_step
        self.max_steps = max_steps
        self.steps_per_epoch = steps_per_epoch
        self.num_devices = num_devices
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.sinks = sinks
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

    def on_step(self, step: int, aux: dict[str, torch.Tensor | dict[str, torch.Tensor]]) -> None:
        """Reads the logging window's values; runs in a step closure.

        The logged loss is the mean over every step since the last log line, so
        it is not one batch's noise; grad norm, update norm, lr and the model's
        metrics are this step's.

        Args:
          step: the step that just ran.
          aux: the step's device scalars: ``grad_norm``, ``update_norm`` and
            ``lr``; optionally ``model``, a ``dict[str, torch.Tensor]`` of 0-d
            tensors the model reports (``StepMetrics.model``).

        Raises:
          FloatingPointError: when the loss is NaN or infinite.
          ValueError: when a model metric is not a single value.
        """
        losses = [t.item() for t in self._window]  # waits for this step's graph
        self._window.clear()
        now = time.perf_counter()  # after the wait: the step has finished
        last_step, last_time = self._last or (step - 1, now)
        self._last = (step, now)
        steps = max(step - last_step, 1)
        elapsed = max(now - last_time, 1e-9)
        tokens_per_s = steps * self.tokens_per_step / elapsed
        metrics = StepMetrics(
            step=step,
            loss=sum(losses) / len(losses),
            grad_norm=aux["grad_norm"].item(),
            update_norm=aux["update_norm"].item(),
            lr=aux["lr"].item(),
            tokens_per_s=tokens_per_s,
            tokens_per_s_per_device=tokens_per_s / self.num_devices,
            mfu=tokens_per_s * self.flops_per_token / self.peak_flops,
            step_time_s=elapsed / steps,
            tokens_seen=step * self.tokens_per_step,
            compiles=self.compile_counter(),
            timestamp=time.time(),
            epoch=step / self.steps_per_epoch if self.steps_per_epoch else None,
            model=_read_model_metrics(aux.get("model", {})),
        )
        self.history.append(metrics)
        log.info(metrics.human(self.max_steps))
        for sink in self.sinks:
            sink(metrics)
        if not math.isfinite(metrics.loss):
            raise FloatingPointError(
                f"loss is {metrics.loss} at step {step}; stopping. Lower the learning "
                f"rate or check the data."
            )

    def on_eval(self, metrics: EvalMetrics) -> None:
        """Logs an evaluation and keeps its time out of the throughput."""
        log.info(metrics.human())
        for sink in self.sinks:
            sink(metrics)
        if self._last is not None:
            last_step, last_time = self._last
            self._last = (last_step, last_time + metrics.eval_time_s)


def _read_model_metrics(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """The model's scalars on the host (the shape check reads no device value)."""
    read = {}
    for name, value in values.items():
        if value.numel() != 1:
            raise ValueError(
                f"the model reported metric {name!r} with shape {tuple(value.shape)}; model "
                f"metrics are single values (0-d tensors). Fix: reduce it in the model, or "
                f"report one metric per element ({name}/0, {name}/1, ...)."
            )
        read[name] = value.item()
    return read
