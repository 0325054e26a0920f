"""Step metrics: read on the host in step closures, written to sinks.

The trainer hands device tensors to ``StepLogger`` through
``xm.add_step_closure``; values are read there, after the step's graph ran, so
logging never adds a graph or a recompilation. Throughput is measured between
consecutive logged steps (wall clock), which on an asynchronous device is the
rate the device completes steps. MFU = achieved model FLOP/s over the peak of
all devices; model FLOPs per token come from the config (MaxText's formula,
``xlafw.config.plan.flops_per_token``).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable

import torch

from xlafw import storage

log = logging.getLogger(__name__)


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
    """

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

    def human(self, max_steps: int) -> str:
        eta = (max_steps - self.step) * self.step_time_s
        epoch = f" epoch {self.epoch:.2f} |" if self.epoch is not None else ""
        return (
            f"step {self.step:>5}/{max_steps} |{epoch} loss {self.loss:.4f} | "
            f"grad {self.grad_norm:.3f} | update {self.update_norm:.3g} | lr {self.lr:.2e} | "
            f"{self.tokens_per_s:,.0f} tok/s | mfu {100 * self.mfu:.1f}% | "
            f"{self.step_time_s:.3f} s/step | compiles {self.compiles} | "
            f"eta {eta / 60:.1f} min"
        )


class JsonlSink:
    """Writes one JSON object per logged step to ``metrics.jsonl``, local or in a bucket.

    A file already there (an earlier run of the same run directory) is kept and
    continued, so a resumed run's records follow the interrupted run's.

    - Local: each record is appended and flushed, so a reader tailing the file
      sees every step as it is logged.
    - Object store (``gs://...``): an object cannot be appended to, only
      replaced whole. Records go to a local staging file (seeded with the
      object's current contents) and the object is rewritten from it at most
      every ``upload_every_s`` seconds and at ``close``. Rewriting on every
      record would upload the whole file per step, which grows quadratically
      over a run; with a period the upload rate stays at most (file size /
      period), and the staging file keeps host memory flat. A crash loses at
      most the last period's records; those of steps after the last
      checkpoint are logged again when the run resumes.

    Args:
      path: the JSONL file, a local path or an fsspec URL.
      upload_every_s: on an object store, the shortest time between uploads.
    """

    def __init__(self, path: str, upload_every_s: float = 30.0):
        self.path = storage.path(path)
        self.remote = storage.is_remote(path)
        self.upload_every_s = upload_every_s
        if self.remote:
            self.file = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the sink
            if self.path.exists():
                with self.path.open("rb") as earlier:
                    shutil.copyfileobj(earlier, self.file)
            self._uploaded_at = time.monotonic()
            self._pending = False
        else:
            self.file = open(path, "ab")  # noqa: SIM115 - a sink lives as long as the loop

    def __call__(self, metrics: StepMetrics) -> None:
        self.file.write((json.dumps(dataclasses.asdict(metrics)) + "\n").encode())
        self.file.flush()
        if self.remote:
            self._pending = True
            if time.monotonic() - self._uploaded_at >= self.upload_every_s:
                try:
                    self.upload()
                except Exception as e:  # a metrics upload must not end a training run
                    self._uploaded_at = time.monotonic()  # retried a period later
                    log.warning("could not upload %s (retried later): %s", self.path, e)

    def upload(self) -> None:
        """Replaces the object with every record so far (object store only)."""
        self.file.seek(0)
        with storage.open_atomic(self.path) as out:
            shutil.copyfileobj(self.file, out)
        self.file.seek(0, os.SEEK_END)
        self._uploaded_at = time.monotonic()
        self._pending = False

    def flush(self) -> None:
        """Makes every record so far durable (the trainer calls it after each checkpoint)."""
        if self.remote and self._pending:
            self.upload()

    def close(self) -> None:
        """Uploads what is not uploaded yet (object store) and closes the file."""
        if self.file.closed:
            return
        if self.remote and self._pending:
            self.upload()
        self.file.close()


class WandbSink:
    """Logs to Weights & Biases; a resumed run continues the same wandb run.

    Args:
      mode: ``offline`` or ``online``.
      project: the wandb project.
      name: the run name (the experiment's).
      run_dir: wandb files go to ``<run_dir>/wandb`` (``./wandb`` when
        ``run_dir`` is in a bucket); the run id is kept in
        ``<run_dir>/wandb_id.txt`` so a restart resumes it.
      config: the flattened config, logged as the run's config.
    """

    def __init__(self, mode: str, project: str, name: str, run_dir: str, config: dict):
        import wandb

        id_file = storage.path(run_dir) / "wandb_id.txt"
        if id_file.exists():
            run_id = id_file.read_text().strip()
        else:
            run_id = uuid.uuid4().hex[:12]
            storage.write_text(id_file, run_id)
        self.run = wandb.init(
            project=project,
            name=name,
            id=run_id,
            resume="allow",
            mode=mode,
            # wandb writes local files only: for a run directory in a bucket
            # they go to its default, ./wandb in the working directory.
            dir=None if storage.is_remote(run_dir) else run_dir,
            config=config,
        )

    def __call__(self, metrics: StepMetrics) -> None:
        prefix = getattr(metrics, "wandb_prefix", "train")  # eval records: "eval"
        fields = dataclasses.asdict(metrics).items()
        values = {f"{prefix}/{k}": v for k, v in fields if v is not None}
        self.run.log(values, step=metrics.step)

    def flush(self) -> None:
        """Nothing to do: wandb syncs in its own process."""

    def close(self) -> None:
        self.run.finish()


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
        sinks: list[Callable[[StepMetrics], None]],
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

    def on_step(self, step: int, aux: dict[str, torch.Tensor]) -> None:
        """Reads the logging window's values; runs in a step closure.

        The logged loss is the mean over every step since the last log line, so
        it is not one batch's noise; grad norm, update norm and lr are this step's.

        Raises:
          FloatingPointError: when the loss is NaN or infinite.
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

    def on_eval(self, metrics) -> None:
        """Logs an evaluation (``EvalMetrics``) and keeps its time out of the throughput."""
        log.info(metrics.human())
        for sink in self.sinks:
            sink(metrics)
        if self._last is not None:
            last_step, last_time = self._last
            self._last = (last_step, last_time + metrics.eval_time_s)


def make_sinks(
    settings, run_dir: str, experiment_name: str, flat_config: dict, primary: bool
) -> list:
    """The metrics file, plus wandb when configured (on the primary process only).

    With ``run_dir`` in a bucket, only the primary process writes the metrics
    file (an object has one writer).

    Args:
      settings: the experiment's ``MetricsSettings``.
      run_dir: where ``metrics.jsonl`` and wandb's files go.
      experiment_name: names the wandb run.
      flat_config: the flattened config, logged as wandb's run config.
      primary: whether this is process 0.
    """
    sinks: list = []
    # Every process logs the same global values. Local run directories are per
    # host, so each keeps its file; an object has one writer, process 0.
    if primary or not storage.is_remote(run_dir):
        sinks.append(JsonlSink(os.path.join(run_dir, "metrics.jsonl")))
    if settings.wandb != "disabled" and primary:
        config = {k: str(v) for k, v in flat_config.items()}
        sinks.append(
            WandbSink(settings.wandb, settings.wandb_project, experiment_name, run_dir, config)
        )
    return sinks


def peak_flops(
    declared_tflops: float | None, tpu_generation: str | None, num_devices: int
) -> float:
    """Peak FLOP/s of all devices together, for MFU.

    Declared beats the TPU table (bf16 peak per chip); on XLA's CPU backend it is
    the host's measured matmul rate, shared by every virtual device.
    """
    from xlafw.config.hardware import TPU_TYPES

    if declared_tflops:
        return declared_tflops * 1e12 * num_devices
    if tpu_generation in TPU_TYPES:
        return TPU_TYPES[tpu_generation].peak_bf16_flops * num_devices
    measured = measured_cpu_matmul_flops()
    peak = best_cpu_matmul_flops(measured)
    log.info(
        "MFU peak: %.1f GFLOP/s, the best host float32 matmul rate measured on this machine "
        "(now %.1f; declare metrics.peak_tflops_per_device to fix it)",
        peak / 1e9,
        measured / 1e9,
    )
    return peak


CPU_PEAK_FILE = "~/.cache/xlafw/cpu_matmul_peak.json"


def best_cpu_matmul_flops(measured: float, path: str = CPU_PEAK_FILE) -> float:
    """The best rate measured so far on this machine, ``measured`` included.

    One 20 ms probe reads low when other work shares the cores (seen: 11
    GFLOP/s against a 200 GFLOP/s best, while another process compiled), which
    made MFU exceed 100%. The best over runs converges to the host's peak. Kept
    per CPU model, core count and torch thread count; the file is rewritten
    atomically, and an unreadable or unwritable one only loses the memory.
    """
    path = os.path.expanduser(path)
    key = f"{_cpu_model()}|{os.cpu_count()}|{torch.get_num_threads()}"
    try:
        with open(path) as f:
            known = json.load(f)
        remembered = float(known.get(key, 0.0))
    except (OSError, ValueError, TypeError, AttributeError):  # unreadable: start afresh
        known, remembered = {}, 0.0
    best = max(measured, remembered)
    if best > remembered:
        known[key] = best
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "w") as f:
                json.dump(known, f, indent=1)
            os.replace(tmp, path)
        except OSError as e:
            log.debug("could not remember the CPU peak in %s: %s", path, e)
    return best


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def measured_cpu_matmul_flops(size: int = 512, repeats: int = 10) -> float:
    """Best-of-``repeats`` FLOP/s of a float32 matmul on the host CPU (eager torch).

    The best, not the mean: a peak, robust to other processes sharing the cores.
    One untimed call first (the first matmul starts torch's thread pool). Small
    (about 20 ms in all) because it runs at every start-up.
    """
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def plot(jsonl_path: str, png_path: str) -> None:
    """Draws loss and throughput against step from a metrics file into a PNG.

    Both paths may be local or fsspec URLs; the PNG is written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in storage.path(jsonl_path).read_text().splitlines()]
    rows = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    if not rows:
        return
    steps = [r["step"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot(steps, [r["loss"] for r in rows], label="train")
    if evals:
        top.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval")
        top.legend()
    top.set_ylabel("loss")
    top.grid(alpha=0.3)
    bottom.plot(steps, [r["tokens_per_s"] for r in rows])
    bottom.set_ylabel("tokens/s")
    bottom.set_xlabel("step")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    png = io.BytesIO()  # savefig writes local files only; storage writes anywhere
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    storage.write_bytes(png_path, png.getvalue())
