"""The trainer: the documented startup sequence, then the step loop.

Startup (each stage is logged as ``[startup N/13]``):

 1. logging set up            6. model built (model dtype; on the host or the XLA
                                 device, see TrainerSettings.init_on); rendezvous
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
import signal
import sys
from collections.abc import Sequence

import fiddle as fdl
import torch
from fiddle import printing
from fiddle.experimental import serialization

from xlafw import storage
from xlafw.config import config_hash, validate, write_run_files
from xlafw.config.hardware import backend
from xlafw.config.plan import Plan
from xlafw.experiment import HOST_INIT_MAX_PARAMETERS, Experiment
from xlafw.metrics import StepLogger, StepMetrics, make_sinks, peak_flops, plot
from xlafw.optim import state_tensors_per_parameter
from xlafw.parallel.remat import unannotated_scan_carry

log = logging.getLogger(__name__)
STARTUP_STAGES = 13


def stage(n: int, message: str, *args) -> None:
    log.info(f"[startup {n:>2}/{STARTUP_STAGES}] {message}", *args)


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s.%(msecs)03d %(levelname).1s %(name)s] %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stdout,
        force=True,
    )
    for noisy in ("datasets", "fsspec", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


class TrainingStopped(RuntimeError):
    """Training stopped on a fault (NaN loss); the newest good checkpoint is kept."""


class NonFiniteLoss(TrainingStopped):
    """The loss became NaN or infinite; retrying the same run would diverge again."""


class Preempted(RuntimeError):
    """SIGTERM/SIGINT stopped the run after a committed checkpoint; a rerun resumes."""


class RunRefused(RuntimeError):
    """The run cannot start (unwritable checkpoints, config drift); nothing was trained."""


class RunFailed(TrainingStopped):
    """An input, a resource or the code failed after the runtime started.

    Attributes:
      exit_code: ``xlafw.exit_codes.ExitCode`` for the process (1 or 4).
    """

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class Trainer:
    """Trains one built experiment on the XLA runtime.

    Args:
      experiment: the built experiment.
      config: the config it was built from (saved with every checkpoint).
      argv: the command line, for the run files.
      plan: what validation computed for the config (parameters, FLOPs per
        token, the model's family); None computes it here (``train`` and
        ``xlafw.main`` pass the one validation made).
    """

    def __init__(
        self,
        experiment: Experiment,
        config: fdl.Config,
        argv: Sequence[str] = (),
        plan: Plan | None = None,
    ):
        self.experiment = experiment
        self.config = config
        self.plan = plan if plan is not None else validate(config, purpose="plan")
        self.argv = argv
        self.config_json = serialization.dump_json(config, indent=2)
        self.config_hash = config_hash(config)
        self.run_dir = experiment.run_dir
        self.settings = experiment.trainer
        self.start_step = 0
        self.step: int | None = None  # the step running; None during start-up
        self.preempted_at: int | None = None
        self._evaluated = False
        self._stop_signal: int | None = None

    # -- startup (stages 4-12) ------------------------------------------------------------

    def setup(self) -> None:
        """Startup stages 4-12: runtime, model, parallelism, optimizer, checkpoint, data."""
        import torch_xla

        self._start_runtime()
        sharded = self._build_model()
        schedule = self._build_optimizer()
        resume_step = self._open_checkpoints()
        host_state = self.checkpoints.host_state(resume_step) if resume_step else None
        self._open_data(sharded, resume_step, host_state)
        torch_xla.sync()  # materialize the initialized, sharded parameters and state
        resumed = self._restore(resume_step, host_state)
        stage(12, "optimizer %s, schedule %s; %s", type(self.optimizer).__name__, schedule, resumed)

    def _start_runtime(self) -> None:
        """Stages 4-5: the XLA runtime, the run files of a remote run, seeds, default dtype."""
        from xlafw import runtime
        from xlafw.parallel import apply as parallel_apply

        exp, settings = self.experiment, self.settings
        self.rt = runtime.start(
            spmd=parallel_apply.wants_spmd(exp.mesh), compile_cache_dir=self._compile_cache_dir()
        )
        if storage.is_remote(self.run_dir) and self.rt.process_index == 0:
            write_run_files(self.config, self.run_dir, self.argv)
        # Before any other thread or graph runs: on CPU this measures the host.
        self.peak_flops = peak_flops(
            exp.metrics.peak_tflops_per_device, runtime.tpu_generation(), self.rt.num_devices
        )
        stage(4, "seed %d (python, numpy, torch, XLA)", settings.seed)
        runtime.seed_everything(settings.seed)
        stage(5, "default dtype float32")
        torch.set_default_dtype(torch.float32)

    def _build_model(self):
        """Stages 6-11: the model, its sharding, HF weights, pure modules, remat, barriers."""
        from xlafw import runtime
        from xlafw.parallel import apply as parallel_apply

        exp, settings, plan = self.experiment, self.settings, self.plan
        on_host, why = self._init_on_host()
        with (
            default_dtype(settings.torch_dtype),
            contextlib.nullcontext() if on_host else self.rt.device,
        ):
            self.model = exp.model()
        if on_host:
            self.model.to(self.rt.device)
        runtime.rendezvous("model_built")
        groups = ", ".join(f"{k} {v:,}" for k, v in plan.parameter_groups.items() if v)
        stage(
            6,
            "model %s (%s family) built in %s on %s, initialized %s: %s parameters (%s)",
            type(self.model).__name__,
            plan.family.name,
            settings.param_dtype,
            self.rt.device,
            why,
            f"{plan.num_parameters:,}",
            groups,
        )
        stage(7, parallel_apply.patch_linears(self.model, self.rt))
        sharded = parallel_apply.shard(self.model, exp, self.rt)
        self.input_sharding = sharded.input_sharding
        stage(8, sharded.summary)
        # The runtime's mesh: a pod's validation ran before its device count was known.
        for advice in plan.family.mesh_advice(self.model.config, sharded.axis_sizes):
            log.warning("%s", advice)
        if settings.init_from_hf:
            from xlafw.models.hf_io import load_hf_weights

            # After sharding and before any sync: each host reads only its shards.
            log.info(load_hf_weights(self.model, settings.init_from_hf).summary())
        stage(9, parallel_apply.mark_pure_modules(self.model, exp.remat))
        stage(10, parallel_apply.apply_checkpointing(self.model, exp.remat))
        if warning := unannotated_scan_carry(exp.remat, exp.sharding, self.rt.spmd):
            log.warning(warning)
        stage(11, parallel_apply.add_optimization_barriers(self.model, exp.remat))
        return sharded

    def _build_optimizer(self):
        """The LR schedule and the optimizer, its state sharded like the parameters."""
        from xlafw.parallel import apply as parallel_apply

        exp = self.experiment
        schedule = exp.lr_schedule(total_steps=self.settings.max_steps)
        self.optimizer = exp.optimizer(self.model.parameters(), schedule=schedule)
        self.optimizer.init_state()
        parallel_apply.shard_optimizer_state(self.optimizer, self.model, exp, self.rt)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        return schedule

    def _open_checkpoints(self) -> int | None:
        """The checkpoint manager, a check that one save fits, and the step to resume from."""
        from xlafw.checkpoint import CheckpointManager

        exp = self.experiment
        async_save = exp.checkpoint.async_save
        if async_save is None:
            async_save = self.rt.device_type != "CPU"
        self.checkpoints = CheckpointManager(
            exp.checkpoint,
            exp.checkpoint_dir,
            xla_device=self.rt.device,
            async_save=async_save,
        )
        # Parameters plus the optimizer's parameter-sized state tensors.
        tensors = 1 + state_tensors_per_parameter(type(self.optimizer))
        state_bytes = sum(tensors * p.numel() * p.element_size() for p in self.params)
        self.checkpoints.preflight(state_bytes // self.rt.process_count)
        return self.checkpoints.resume_point(self.config, self.config_hash)

    def _open_data(self, sharded, resume_step: int | None, host_state) -> None:
        """This host's training batches (resumed at the checkpoint's position) and eval."""
        from xlafw.data.device_loader import DeviceLoader

        exp = self.experiment
        self.data = exp.data(host=sharded.data_shard)
        if resume_step is not None:
            self.data.restore(host_state.data_position, batches=resume_step)
        # The loader's thread starts now: the first batches are read, tokenized and
        # copied while the initialization graph below (if any) runs and step 1 traces.
        self.batches = DeviceLoader(self.data, self.rt.device, self.input_sharding)
        self.evaluator = None
        if exp.eval.every_steps and exp.eval.data is not None:
            from xlafw.evaluation import Evaluator

            self.evaluator = Evaluator(
                self.model,
                lambda: exp.eval.data(host=sharded.data_shard),
                exp.eval.steps,
                self.rt.device,
                self.input_sharding,
                self._autocast,
            )
            self.evaluator.prepare()

    def _restore(self, resume_step: int | None, host_state) -> str:
        """Loads the checkpoint's model, optimizer and RNG state; returns the log line."""
        import torch_xla

        if resume_step is None:
            return f"no checkpoint in {self.checkpoints.directory}: starting at step 1"
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        self.checkpoints.restore_state(resume_step, state)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.checkpoints.restore_rng(host_state)
        # Materialize the loaded values, so the first step runs the same graph
        # as every other (and as the uninterrupted run: bit-identical losses).
        torch_xla.sync()
        self.start_step = resume_step
        return (
            f"resumed from {self.checkpoints.path(resume_step)} (step {resume_step}, "
            f"data at {host_state.data_position})"
        )

    def _init_on_host(self) -> tuple[bool, str]:
        """Whether to initialize the weights on the host, and why (for the log)."""
        mode = self.settings.init_on
        if mode != "auto":
            return mode == "host", f"on the {mode} (trainer.init_on={mode})"
        if self.plan.num_parameters <= HOST_INIT_MAX_PARAMETERS:
            return True, "on the host (small model: no initialization graph to compile)"
        return False, "on the device (large model: sharded initialization graph)"

    def _compile_cache_dir(self) -> str | None:
        mode, on_cpu = self.settings.compile_cache, backend() == "CPU"
        if mode == "auto" and on_cpu:
            log.info(
                "persistent compilation cache off: XLA's CPU client writes entries but cannot "
                "deserialize them (trainer.compile_cache=on forces it; BUILD_NOTES.md, "
                "Observability)"
            )
        if mode == "on" or (mode == "auto" and not on_cpu):
            return self.settings.compile_cache_dir
        return None

    # -- one step ---------------------------------------------------------------------------

    def train_step(self, batch: dict[str, torch.Tensor]):
        """Forward, loss, backward, clipping, optimizer and schedule: one graph.

        With ``trainer.grad_accum_steps = k > 1`` the global batch is cut into
        k micro-batches, traced one after another into the same graph, each
        backward adding to the gradients. Micro-batch ``j`` takes rows ``j,
        j + k, j + 2k, ...``: under SPMD each device's block of rows then feeds
        every micro-batch, so no micro-batch lands on a subset of the devices.
        Each micro-batch's summed loss is divided by the whole global batch's
        target tokens, so the gradient (and the logged loss) equals the
        unaccumulated step's, SFT masks included.

        A model's auxiliary loss (``CausalLMOutput.aux_loss``, e.g. MoE load
        balancing) is added to the objective, averaged over micro-batches, and
        logged with the model's other metrics, apart from the loss.
        """
        from xlafw.optim import clip_grad_norm

        # Pipelines yield exactly the model's inputs: input_ids and labels, plus
        # segment_ids/position_ids (packed documents) or attention_mask (SFT pads).
        accum = self.settings.grad_accum_steps
        if accum == 1:
            micro_batches = [batch]
        else:
            target_tokens = self.model.count_targets(batch["labels"])
            denominator = target_tokens.clamp(min=1).float()
            micro_batches = [
                {k: v.view(-1, accum, *v.shape[1:])[:, j] for k, v in batch.items()}
                for j in range(accum)
            ]
        loss, model_metrics = None, {}
        for micro in micro_batches:
            with self._autocast():  # the forward only: backward runs in the forward's dtypes
                out = self.model(**micro)
            part = out.loss if accum == 1 else out.loss_sum / denominator
            objective = part if out.aux_loss is None else part + out.aux_loss / accum
            objective.backward()
            loss = part.detach() if loss is None else loss + part.detach()
            for name, value in out.metrics.items():
                value = value.detach() / accum
                model_metrics[name] = (
                    model_metrics[name] + value if name in model_metrics else value
                )
        if accum == 1:
            target_tokens = out.num_target_tokens
        grad_norm = clip_grad_norm(self.params, self.settings.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, {
            "grad_norm": grad_norm,
            "update_norm": self.optimizer.last_update_norm,
            "lr": self.optimizer.last_lr,
            "target_tokens": target_tokens,
            "model": model_metrics,
        }

    def _autocast(self):
        """bf16 matmuls over fp32 master weights when ``compute_dtype`` differs (else nothing)."""
        dtype = self.settings.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("xla", dtype=dtype)

    # -- the step loop (stage 13) -----------------------------------------------------------

    def _on_signal(self, signum, frame) -> None:
        if self._stop_signal is None:
            log.warning(
                "received %s: saving a checkpoint after the current step, then exiting",
                signal.Signals(signum).name,
            )
        self._stop_signal = signum

    def _save(self, step: int) -> None:
        trainer_state = {"step": step, "config_hash": self.config_hash}
        shared_files = {
            "trainer_state.json": json.dumps(trainer_state, indent=2),
            "config.json": self.config_json,
        }
        timing = self.checkpoints.save(
            step,
            {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()},
            self.data.position_after(step),
            shared_files,
        )
        log.info("checkpoint step %d: step loop held %.2f s", step, timing.blocked_s)

    def _logger(self, sinks) -> StepLogger:
        from xlafw import runtime

        return StepLogger(
            tokens_per_step=self.data.tokens_per_step,
            max_steps=self.settings.max_steps,
            steps_per_epoch=self.settings.steps_per_epoch,
            num_devices=self.rt.num_devices,
            flops_per_token=self.plan.flops_per_token,
            peak_flops=self.peak_flops,
            sinks=sinks,
            compile_counter=runtime.compile_count,
        )

    def _cleanup(self, sinks) -> contextlib.ExitStack:
        """What the loop's exit undoes, in reverse order, each even if an earlier one raised.

        The last save in flight commits, the signal handlers return, the metrics land.
        """
        cleanup = contextlib.ExitStack()
        for sink in sinks:
            cleanup.callback(sink.close)
        for s in (signal.SIGTERM, signal.SIGINT):
            cleanup.callback(signal.signal, s, signal.signal(s, self._on_signal))
        cleanup.callback(self.checkpoints.close)
        cleanup.callback(self.batches.close)
        return cleanup

    def train(self) -> list[StepMetrics]:
        """Stage 13: the step loop. Returns the logged metrics.

        Checkpoints are written every ``checkpoint.every_steps``, at the last step
        and after SIGTERM/SIGINT (then the loop stops). A checkpoint step is always
        a logged step, so its loss was checked to be finite before it is saved.

        Raises:
          NonFiniteLoss: on a NaN or infinite loss.
          TrainingStopped: on a recompilation after warm-up with
            ``metrics.on_recompile=error``.
        """
        import torch_xla.core.xla_model as xm

        settings = self.settings
        self.model.train()
        sinks = make_sinks(
            self.experiment.metrics,
            self.run_dir,
            self.experiment.name,
            printing.as_dict_flattened(self.config),
            primary=self.rt.process_index == 0,
        )
        logger = self._logger(sinks)
        stage(
            13,
            "step loop: steps %d..%d, %s tokens/step, logging every %d",
            self.start_step + 1,
            settings.max_steps,
            f"{self.data.tokens_per_step:,}",
            settings.log_every,
        )
        logger.start(self.start_step)
        if self.start_step >= settings.max_steps:
            log.warning(
                "nothing to train: the checkpoint is at step %d and trainer.max_steps is %d. "
                "Raise trainer.max_steps to continue, or use another trainer.run_dir.",
                self.start_step,
                settings.max_steps,
            )
        step = self.start_step
        with self._cleanup(sinks):
            step = self._loop(logger, sinks)
            xm.wait_device_ops()
        metrics_file = os.path.join(self.run_dir, "metrics.jsonl")
        if self.rt.process_index == 0:
            plot(metrics_file, os.path.join(self.run_dir, "metrics.png"))
        log.info("training finished at step %d of %d", step, settings.max_steps)
        return logger.history

    def _loop(self, logger: StepLogger, sinks) -> int:
        """Runs the steps; returns the last one run."""
        import torch_xla.core.xla_model as xm
        import torch_xla.debug.profiler as xp

        from xlafw import runtime

        settings, every = self.settings, self.experiment.checkpoint.every_steps
        profile = self.experiment.metrics.profile_steps
        compiles, shapes = runtime.compile_count(), None
        step = self.start_step
        for step in range(self.start_step + 1, settings.max_steps + 1):
            self.step = step
            batch = next(self.batches)
            if profile and step == profile[0]:
                xm.wait_device_ops()
                xp.start_trace(os.path.join(self.run_dir, "profile"))
            scheduled_save = (every and step % every == 0) or step == settings.max_steps
            log_now = (
                scheduled_save or step == self.start_step + 1 or step % settings.log_every == 0
            )
            stopping = self._run_step(step, batch, logger, log_now)
            if profile and step == profile[1]:
                xm.wait_device_ops()
                xp.stop_trace()
                log.info("XLA profile of steps %d-%d in %s/profile", *profile, self.run_dir)
            new_shapes = {k: tuple(v.shape) for k, v in batch.items()}
            now_compiled = runtime.compile_count()
            if step > self.start_step + 2 and now_compiled > compiles:
                self._on_recompile(step, shapes, new_shapes)
            compiles, shapes = now_compiled, new_shapes
            # Not when stopping: the preemption checkpoint comes first (xpk
            # allows 30 s between SIGTERM and SIGKILL).
            eval_due = self.evaluator and step % self.experiment.eval.every_steps == 0
            if eval_due and not stopping:
                self._evaluate(step, logger)
                compiles = runtime.compile_count()  # the eval graph is not the step's
            if scheduled_save or stopping:
                self._save(step)
                for sink in sinks:  # the metrics of the steps a resume will not rerun
                    sink.flush()
            if stopping:
                self.checkpoints.wait()
                if step < settings.max_steps:  # a signal during the last step: done
                    log.warning("stopped after step %d on a signal; rerun to resume", step)
                    self.preempted_at = step
                break
        return step

    def _run_step(self, step: int, batch, logger: StepLogger, log_now: bool) -> bool:
        """Traces and runs one step, its metrics read if ``log_now``; returns whether to stop.

        Raises:
          NonFiniteLoss: when the step's loss is NaN or infinite.
        """
        import torch_xla
        import torch_xla.core.xla_model as xm

        from xlafw.checkpoint import CheckpointError

        try:
            with torch_xla.compile(name="train_step"):
                loss, aux = self.train_step(batch)
                logger.record(loss)
                if log_now:
                    # Synchronous: values are read right after this step's
                    # graph ran, so a NaN stops the run before it is saved.
                    xm.add_step_closure(logger.on_step, args=(step, aux), run_async=False)
            # Every host stops after the same step (a preempted node's pod is
            # signalled alone), or the others would wait in the next step's
            # collectives while it waits in the checkpoint's.
            stopping = self.checkpoints.hosts.any(self._stop_signal is not None)
            if stopping and not log_now:
                logger.on_step(step, aux)  # the step ran: a plain read, no graph
            return stopping
        except FloatingPointError as e:
            try:
                self.checkpoints.wait()  # a save in flight is of an earlier, finite step
            except CheckpointError as save_error:
                log.error("%s", save_error)
            newest = self.checkpoints.steps()
            raise NonFiniteLoss(
                f"{e} The newest good checkpoint is "
                f"{self.checkpoints.path(newest[-1]) if newest else 'none'}."
            ) from None

    def failure(self, error: Exception) -> RunFailed:
        """One message for an unexpected error: what, when, what was saved; traceback to a file."""
        from xlafw import failures

        rt = getattr(self, "rt", None)
        process_index, process_count = (rt.process_index, rt.process_count) if rt else (0, 1)
        log_file = failures.write_traceback(self.run_dir, error, process_index, process_count)
        diagnosis = failures.diagnose(error)
        when = "during start-up" if self.step is None else f"at step {self.step}"
        saved = "nothing saved yet"
        checkpoints = getattr(self, "checkpoints", None)
        if checkpoints is not None:
            try:
                newest = checkpoints.steps()
            except Exception:  # the storage may be what failed
                newest = None
            if newest:
                saved = f"the newest committed checkpoint is {checkpoints.path(newest[-1])}"
            elif newest is None:
                saved = f"cannot list {checkpoints.directory}"
        parts = [
            f"{diagnosis.what} {when}: {failures.first_line(error)}.",
            f"Saved: {saved}.",
            f"Fix: {diagnosis.fix}." if diagnosis.fix else "",
            f"Full traceback in {log_file}." if log_file else "",
        ]
        return RunFailed(" ".join(p for p in parts if p), diagnosis.exit_code)

    def _evaluate(self, step: int, logger: StepLogger) -> None:
        """Runs one evaluation; after the first, its graph must already be compiled."""
        from xlafw import runtime

        warm, before = self._evaluated, runtime.compile_count()
        logger.on_eval(self.evaluator.run(step))
        self._evaluated = True
        if warm and runtime.compile_count() > before:
            message = f"XLA recompiled the eval graph at step {step}, after its warm-up"
            if self.experiment.metrics.on_recompile == "error":
                raise TrainingStopped(message + " (metrics.on_recompile=error)")
            log.warning(message)

    def _on_recompile(self, step: int, before: dict | None, after: dict) -> None:
        cause = (
            f"input shapes changed {before} -> {after}"
            if before != after
            else "the step graph changed (PT_XLA_DEBUG_LEVEL=2 prints the cause)"
        )
        message = f"XLA recompiled at step {step}, after warm-up: {cause}"
        if self.experiment.metrics.on_recompile == "error":
            raise TrainingStopped(message + " (metrics.on_recompile=error)")
        log.warning(message)


def train(cfg: fdl.Config, argv: Sequence[str] = (), plan: Plan | None = None) -> list[StepMetrics]:
    """Runs the full startup sequence and training for an overridden config.

    Args:
      cfg: the experiment config, overrides applied.
      argv: the command line, for the run files.
      plan: ``validate(cfg)``'s result when the caller already validated
        (``xlafw.main`` does); None validates here.

    Raises:
      RunRefused: before the first step (unwritable or damaged checkpoints,
        config drift); nothing was trained.
      TrainingStopped: a fault stopped training (``NonFiniteLoss`` for a NaN,
        ``RunFailed`` for any other error after start-up, its traceback in
        the run directory's ``error.log``).
      Preempted: a signal stopped training after a committed checkpoint.
    """
    setup_logging()
    stage(1, "logging set up")
    if plan is None:
        plan = validate(cfg)
    stage(2, "config validated: %s", plan.family.name)
    experiment: Experiment = fdl.build(cfg)
    run_dir = experiment.run_dir
    log.info("config:\n%s", printing.as_str_flattened(cfg))
    if storage.is_remote(run_dir):
        # One writer per object: process 0 writes them once the runtime knows it.
        stage(3, "config printed; process 0 saves it to %s after start-up", run_dir)
    else:
        write_run_files(cfg, run_dir, argv)  # each host's own directory
        stage(3, "config printed and saved to %s", run_dir)
    trainer = Trainer(experiment, cfg, argv, plan)
    from xlafw.checkpoint import CheckpointError

    try:
        trainer.setup()
    except CheckpointError as e:
        raise RunRefused(str(e)) from None
    except Exception as e:  # one message; the traceback goes to error.log
        raise trainer.failure(e) from None
    try:
        history = trainer.train()
    except CheckpointError as e:
        if trainer._stop_signal is not None:  # resume from the newest committed one
            raise Preempted(f"{e}; a rerun resumes from the newest committed checkpoint") from None
        raise TrainingStopped(f"{e}. The newest committed checkpoint is kept.") from None
    except TrainingStopped:
        raise
    except Exception as e:  # one message; the traceback goes to error.log
        raise trainer.failure(e) from None
    from xlafw import runtime

    summary = {
        "num_parameters": plan.num_parameters,
        "compiles": runtime.compile_count(),
        "compile_seconds": runtime.compile_seconds(),
        "final": dataclasses.asdict(history[-1]) if history else None,
    }
    if trainer.rt.process_index == 0 or not storage.is_remote(run_dir):
        storage.write_text(storage.path(run_dir) / "summary.json", json.dumps(summary, indent=2))
    if trainer.preempted_at is not None:
        raise Preempted(
            f"stopped by a signal after step {trainer.preempted_at}, with its checkpoint "
            f"committed; rerun the same command to resume."
        )
    return history
