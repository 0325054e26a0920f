"""The trainer: the documented startup sequence, then the step loop.

Startup (each stage is logged as ``[startup N/13]``):

 1. logging set up            6. model built (model dtype, XLA device); rendezvous
 2. config validated          7. nn.Linear patched for SPMD (einsum)
 3. config printed and saved  8. mesh, input sharding, parameter sharding
 4. seeds set                 9. pure modules marked
 5. default dtype float32    10. activation checkpointing / scan
                             11. optimization barriers
                             12. optimizer and LR schedule created
                             13. step loop

Stages 1-3 touch only the config: this module imports torch_xla (through
``xlafw.runtime``) only after they pass, so a bad config never starts a
runtime. The step loop traces one graph per step (forward, loss, backward,
clipping, optimizer, schedule); metrics are read in step closures only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence

import fiddle as fdl
import torch
from fiddle import printing
from fiddle.experimental import serialization

from xlafw.config import validate
from xlafw.experiment import Experiment
from xlafw.metrics import StepLogger, StepMetrics

log = logging.getLogger(__name__)
STARTUP_STAGES = 13


def stage(n: int, message: str, *args) -> None:
    log.info(f"[startup {n:>2}/{STARTUP_STAGES}] {message}", *args)


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname).1s %(name)s] %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stdout,
        force=True,
    )
    for noisy in ("datasets", "fsspec", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def save_config(cfg: fdl.Config, run_dir: str, argv: Sequence[str]) -> None:
    """Writes config.json (reloadable), config.txt (flattened) and argv.txt."""
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        f.write(serialization.dump_json(cfg, indent=2))
    with open(os.path.join(run_dir, "config.txt"), "w") as f:
        f.write(printing.as_str_flattened(cfg) + "\n")
    with open(os.path.join(run_dir, "argv.txt"), "w") as f:
        f.write(" ".join(argv) + "\n")


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def parameter_breakdown(model: torch.nn.Module) -> dict[str, int]:
    """Parameter counts grouped by role (attention, mlp, embedding, ...)."""
    groups = {"attention": 0, "mlp": 0, "embedding": 0, "lm_head": 0, "norm": 0, "other": 0}
    for name, p in model.named_parameters():
        key = next(
            (
                g
                for g, marker in (
                    ("attention", "self_attn"),
                    ("mlp", "mlp"),
                    ("embedding", "embed_tokens"),
                    ("lm_head", "lm_head"),
                    ("norm", "norm"),
                )
                if marker in name
            ),
            "other",
        )
        groups[key] += p.numel()
    return groups


class Trainer:
    """Trains one built experiment on the XLA runtime.

    Args:
      experiment: the built experiment.
      run_dir: where metrics are written (the config is already there).
    """

    def __init__(self, experiment: Experiment, run_dir: str):
        self.experiment = experiment
        self.run_dir = run_dir
        self.settings = experiment.trainer

    def setup(self) -> None:
        """Startup stages 4-12: runtime, model, parallelism, optimizer."""
        from xlafw import runtime
        from xlafw.parallel import apply as parallel_apply

        exp, settings = self.experiment, self.settings
        spmd = parallel_apply.wants_spmd(exp.mesh)
        self.rt = runtime.start(spmd=spmd)
        stage(4, "seed %d (python, numpy, torch, XLA)", settings.seed)
        runtime.seed_everything(settings.seed)
        stage(5, "default dtype float32")
        torch.set_default_dtype(torch.float32)

        with default_dtype(settings.torch_dtype), self.rt.device:
            self.model = exp.model()
        runtime.rendezvous("model_built")
        counts = parameter_breakdown(self.model)
        total = sum(counts.values())
        stage(
            6,
            "model %s built in %s on %s: %s parameters (%s)",
            type(self.model).__name__,
            settings.dtype,
            self.rt.device,
            f"{total:,}",
            ", ".join(f"{k} {v:,}" for k, v in counts.items() if v),
        )
        self.num_parameters = total

        stage(7, parallel_apply.patch_linears(self.model, self.rt))
        sharded = parallel_apply.shard(self.model, exp, self.rt)
        self.input_sharding = sharded.input_sharding
        stage(8, sharded.summary)
        stage(9, parallel_apply.mark_pure_modules(self.model, exp.remat))
        stage(10, parallel_apply.apply_checkpointing(self.model, exp.remat))
        stage(11, parallel_apply.add_optimization_barriers(self.model, exp.remat))

        schedule = exp.lr_schedule(total_steps=settings.max_steps)
        self.optimizer = exp.optimizer(self.model.parameters(), schedule=schedule)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        stage(12, "optimizer %s, schedule %s", type(self.optimizer).__name__, schedule)

        self.data = exp.data(host=sharded.data_shard)
        import torch_xla

        torch_xla.sync()  # materialize the initialized (and sharded) parameters

    def train_step(self, batch: dict[str, torch.Tensor]):
        """Forward, loss, backward, clipping, optimizer and schedule: one graph."""
        from xlafw.optim import clip_grad_norm

        out = self.model(input_ids=batch["input_ids"], labels=batch["labels"])
        out.loss.backward()
        grad_norm = clip_grad_norm(self.params, self.settings.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return out.loss, {
            "grad_norm": grad_norm,
            "lr": self.optimizer.last_lr,
            "target_tokens": out.num_target_tokens,
        }

    def train(self) -> list[StepMetrics]:
        """Stage 13: the step loop. Returns the logged metrics."""
        import torch_xla
        import torch_xla.core.xla_model as xm
        import torch_xla.distributed.parallel_loader as pl

        from xlafw import runtime

        settings = self.settings
        loader = pl.MpDeviceLoader(self.data, self.rt.device, input_sharding=self.input_sharding)
        batches = iter(loader)
        self.model.train()
        with open(os.path.join(self.run_dir, "metrics.jsonl"), "a") as jsonl:
            logger = StepLogger(
                tokens_per_step=self.data.tokens_per_step,
                max_steps=settings.max_steps,
                steps_per_epoch=settings.steps_per_epoch,
                jsonl=jsonl,
                compile_counter=runtime.compile_count,
            )
            stage(
                13,
                "step loop: steps 1..%d, %s tokens/step, logging every %d",
                settings.max_steps,
                f"{self.data.tokens_per_step:,}",
                settings.log_every,
            )
            logger.start(0)
            for step in range(1, settings.max_steps + 1):
                batch = next(batches)
                with torch_xla.compile(name="train_step"):
                    loss, aux = self.train_step(batch)
                    logger.record(loss)
                    if step == 1 or step % settings.log_every == 0 or step == settings.max_steps:
                        # Synchronous: the values are read right after this step's
                        # graph runs, so errors surface here and nothing is lost at exit.
                        xm.add_step_closure(logger.on_step, args=(step, aux), run_async=False)
            xm.wait_device_ops()
        log.info("training finished: %d steps", settings.max_steps)
        return logger.history


def train(cfg: fdl.Config, argv: Sequence[str] = ()) -> list[StepMetrics]:
    """Runs the full startup sequence and training for an overridden config."""
    setup_logging()
    stage(1, "logging set up")
    validate(cfg)
    stage(2, "config validated")
    experiment: Experiment = fdl.build(cfg)
    run_dir = experiment.run_dir
    save_config(cfg, run_dir, argv)
    log.info("config:\n%s", printing.as_str_flattened(cfg))
    stage(3, "config printed and saved to %s", run_dir)
    trainer = Trainer(experiment, run_dir)
    trainer.setup()
    history = trainer.train()
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(
            {
                "num_parameters": trainer.num_parameters,
                "final": dataclasses.asdict(history[-1]) if history else None,
            },
            f,
            indent=2,
        )
    return history
