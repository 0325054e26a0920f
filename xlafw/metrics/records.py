"""The records the metrics sinks receive: one per logged step, one per evaluation."""

from __future__ import annotations

import dataclasses
from typing import ClassVar


@dataclasses.dataclass(frozen=True)
class StepMetrics:
    """One logged step.

    Attributes:
      step: 1-based optimizer step.
      loss: mean loss over the steps since the previous log line.
      grad_norm: global gradient norm before clipping.
      update_norm: global norm of the optimizer's update (lr times the clipped
        Adam step), weight decay excluded.
      lr: learning rate used by the step.
      tokens_per_s: global tokens per second since the last log line.
      tokens_per_s_per_device: the same divided by the device count.
      mfu: model FLOPs utilization (0..1) over the same window.
      step_time_s: seconds per step over the same window.
      tokens_seen: tokens trained on so far.
      compiles: XLA compilations so far in this process.
      timestamp: Unix time the step's values were read.
      epoch: fractional epoch, when the epoch length is known.
      model: scalars the model reported for this step (the logged step's
        values, not a mean over the window), by name: e.g. a mixture of
        experts' ``aux_loss`` and ``expert_share/0`` .. ``expert_share/{E-1}``.
        Empty for a model that reports none.
    """

    wandb_prefix: ClassVar[str] = "train"

    step: int
    loss: float
    grad_norm: float
    update_norm: float
    lr: float
    tokens_per_s: float
    tokens_per_s_per_device: float
    mfu: float
    step_time_s: float
    tokens_seen: int
    compiles: int
    timestamp: float
    epoch: float | None = None
    model: dict[str, float] = dataclasses.field(default_factory=dict)

    def human(self, max_steps: int) -> str:
        """The log line; a model's ``aux_loss`` and largest expert share come last."""
        eta = (max_steps - self.step) * self.step_time_s
        epoch = f" epoch {self.epoch:.2f} |" if self.epoch is not None else ""
        line = (
            f"step {self.step:>5}/{max_steps} |{epoch} loss {self.loss:.4f} | "
            f"grad {self.grad_norm:.3f} | update {self.update_norm:.3g} | lr {self.lr:.2e} | "
            f"{self.tokens_per_s:,.0f} tok/s | mfu {100 * self.mfu:.1f}% | "
            f"{self.step_time_s:.3f} s/step | compiles {self.compiles} | "
            f"eta {eta / 60:.1f} min"
        )
        if "aux_loss" in self.model:
            line += f" | aux_loss {self.model['aux_loss']:.4g}"
        shares = [v for k, v in self.model.items() if k.startswith("expert_share/")]
        if shares:
            line += f" | max expert share {max(shares):.3f}"
        return line


@dataclasses.dataclass(frozen=True)
class EvalMetrics:
    """One evaluation, as written to the metrics sinks.

    Attributes:
      step: the training step after which it ran.
      eval_loss: mean cross-entropy over the eval batches' target tokens.
      eval_perplexity: ``exp(eval_loss)``.
      eval_tokens: target tokens scored.
      eval_time_s: wall time of the evaluation (the first includes its compile).
      timestamp: Unix time at the end.
    """

    wandb_prefix: ClassVar[str] = "eval"

    step: int
    eval_loss: float
    eval_perplexity: float
    eval_tokens: int
    eval_time_s: float
    timestamp: float

    def human(self) -> str:
        return (
            f"eval after step {self.step} | loss {self.eval_loss:.4f} | perplexity "
            f"{self.eval_perplexity:.1f} | {self.eval_tokens:,} tokens | {self.eval_time_s:.2f} s"
        )
