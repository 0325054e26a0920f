"""Validation loss during training: a held-out stream in a graph of its own.

Every ``eval.every_steps`` the trainer runs ``eval.steps`` batches of the eval
pipeline through the model without a backward pass and logs the
token-weighted mean loss (and its perplexity). The batches are read once, at
the first evaluation, and kept on the devices with the training inputs'
sharding, so every evaluation (and every resumed run) scores exactly the same
tokens: eval losses compare across evaluations and across restarts.

One ``eval_step`` graph is compiled per batch shape (one, since pipelines pad
to a fixed length) and is reused by every later evaluation; it never touches
the parameters, gradients, optimizer state or RNG, so the training losses are
the same with or without evaluation.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable

import torch

from xlafw.metrics.records import EvalMetrics

log = logging.getLogger(__name__)


class Evaluator:
    """Scores the model on a fixed set of held-out batches.

    Args:
      model: the (sharded) model being trained.
      batches: builds the eval pipeline's batch iterator (host tensors); read
        once, for its first ``num_batches`` batches.
      num_batches: batches per evaluation (``eval.steps``).
      device: the XLA device.
      sharding: the training inputs' sharding under SPMD, else None.
      autocast: returns the training step's autocast context (mixed precision).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        batches: Callable[[], Iterable[dict[str, torch.Tensor]]],
        num_batches: int,
        device: torch.device,
        sharding=None,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ):
        self.model = model
        self._make_batches = batches
        self.num_batches = num_batches
        self.device = device
        self.sharding = sharding
        self.autocast = autocast
        self._on_device: list[dict[str, torch.Tensor]] | None = None

    def prepare(self) -> None:
        """Reads the eval batches and puts them on the devices.

        The trainer calls it at start-up, so a broken eval pipeline fails before
        the first step rather than at the first evaluation.
        """
        self._batches()

    def _batches(self) -> list[dict[str, torch.Tensor]]:
        if self._on_device is None:
            import torch_xla.core.xla_model as xm

            host = list(itertools.islice(iter(self._make_batches()), self.num_batches))
            if len(host) < self.num_batches:
                log.warning(
                    "the eval data holds %d batches, fewer than eval.steps=%d: evaluating on %d",
                    len(host),
                    self.num_batches,
                    len(host),
                )
            with torch.no_grad():
                self._on_device = [
                    xm.send_cpu_data_to_device(b, self.device, self.sharding) for b in host
                ]
        return self._on_device

    def run(self, step: int) -> EvalMetrics:
        """Evaluates after training step ``step``; returns the metrics."""
        import torch_xla
        import torch_xla.core.xla_model as xm

        start = time.perf_counter()
        batches = self._batches()
        parts: list[tuple[torch.Tensor, torch.Tensor]] = []
        totals: dict[str, float] = {}

        def read() -> None:  # a step closure: the graphs have run, no new graph
            totals["loss"] = sum(loss.item() for loss, _ in parts)
            totals["tokens"] = sum(int(n.item()) for _, n in parts)

        self.model.eval()
        with torch.no_grad():
            for i, batch in enumerate(batches):
                with torch_xla.compile(name="eval_step"), self.autocast():
                    out = self.model(**batch)
                    parts.append((out.loss_sum.detach(), out.num_target_tokens))
                    if i == len(batches) - 1:
                        xm.add_step_closure(read, run_async=False)
        self.model.train()
        tokens = int(totals.get("tokens", 0))
        loss = totals["loss"] / max(tokens, 1) if tokens else math.nan
        return EvalMetrics(
            step=step,
            eval_loss=loss,
            eval_perplexity=math.exp(min(loss, 80.0)) if tokens else math.nan,
            eval_tokens=tokens,
            eval_time_s=time.perf_counter() - start,
            timestamp=time.time(),
        )
