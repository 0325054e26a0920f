"""Saves, finds, verifies, restores and prunes the checkpoints of one run.

Layout of one checkpoint, ``<directory>/step_00000012/``, written in place:

  .metadata, __*.distcp   tensors: each host writes its shards, process 0 the
                          metadata (``torch.distributed.checkpoint``)
  host_<process>.json     each host's data position and RNG states
  trainer_state.json      step and config hash (process 0)
  config.json             the Fiddle config of the run that wrote it (process 0)
  COMMITTED               written last by process 0: every file's size and CRC32C

A save: every host writes its files; all pass a barrier; process 0 lists and
digests the directory and writes the marker (``commit.py``). Resume considers
only committed steps, verifies the newest against its marker and falls back to
an older one that verifies; process 0 deletes uncommitted leftovers first.

With ``async_save`` the step loop only waits for the device-to-host copy of
the state (taken before the next step can change a parameter); the files are
written by a background thread, one save at a time.

Writing one step is ``saving.py``; the protocol is ``commit.py``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import pickle
import shutil
import time
import warnings
from collections.abc import Mapping
from typing import Any

import fiddle as fdl
import torch
import torch.distributed.checkpoint as dist_cp
from etils import epath
from torch.distributed.checkpoint.api import CheckpointException

from xlafw import storage
from xlafw.checkpoint import commit, safe_load, saving
from xlafw.checkpoint.coordination import Hosts
from xlafw.checkpoint.host_state import HostState, capture_rng, host_file_name, restore_rng
from xlafw.config.diff import diff_configs
from xlafw.config.loading import load_config_json
from xlafw.data.streams import StreamPosition
from xlafw.experiment import Checkpointing

log = logging.getLogger(__name__)

# Config paths that may differ between a checkpoint and the run resuming it.
# Activation annotations change no state and no math (a run planned before the
# batch axes gained ``expert`` resumes with today's stock rules).
RESUMABLE_CHANGES = (
    "trainer.max_steps",
    "trainer.log_every",
    "checkpoint.",
    "sharding.activations",
)
TRAINER_STATE = "trainer_state.json"
CONFIG = "config.json"

# DCP warns on every call without a process group (one process needs none) and
# about its own internals; the messages carry nothing for a user.
warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.distributed\.checkpoint")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or resumed; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class SaveTiming:
    """How long one save held the step loop.

    Attributes:
      step: the checkpoint's step.
      blocked_s: seconds the caller waited (the whole save when synchronous;
        the wait for the previous save plus the copy to host when async).
    """

    step: int
    blocked_s: float


class CheckpointManager:
    """Saves, finds, verifies, restores and prunes checkpoints of one run.

    Args:
      settings: cadence, retention and resume policy.
      directory: the resolved checkpoint directory (local or ``gs://``).
      hosts: this process among the run's processes (default: the process
        group's, or a single host).
      xla_device: the XLA device the state lives on, or None for host tensors
        (DCP's default planners; the multi-process tests use them).
      async_save: write checkpoints in a background thread.
    """

    def __init__(
        self,
        settings: Checkpointing,
        directory: str,
        hosts: Hosts | None = None,
        *,
        xla_device: torch.device | None = None,
        async_save: bool = False,
    ):
        self.settings = settings
        self.directory = epath.Path(directory)
        self.hosts = hosts or Hosts.from_process_group()
        self.xla_device = xla_device
        self.async_save = async_save
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: concurrent.futures.Future | None = None

    # -- start-up ---------------------------------------------------------------

    def preflight(self, estimated_bytes: int) -> None:
        """Fails before training if the directory is unwritable or too small.

        Raises:
          CheckpointError: naming the directory and the fix.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe = self.directory / f".write_probe_{self.hosts.index}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise CheckpointError(
                f"cannot write checkpoints to {self.directory}: {e}. Fix: make it writable "
                f"or set --fdl_set=checkpoint.directory=PATH."
            ) from None
        if not storage.is_remote(self.directory):
            free = shutil.disk_usage(self.directory).free
            if free < estimated_bytes:
                raise CheckpointError(
                    f"{self.directory} has {free / 2**30:.2f} GiB free but one checkpoint needs "
                    f"about {estimated_bytes / 2**30:.2f} GiB. Fix: free space or point "
                    f"checkpoint.directory elsewhere."
                )

    def path(self, step: int) -> epath.Path:
        return self.directory / commit.step_dir_name(step)

    def steps(self) -> list[int]:
        """Steps of the committed checkpoints, oldest first (not verified)."""
        return commit.committed_steps(self.directory)

    def remove_uncommitted(self) -> None:
        """Process 0 deletes what a crash left mid-write; every host then waits.

        Call only at start-up, when no save of this run is in flight: the first
        barrier makes sure every host of this run has got that far.
        """
        self.hosts.barrier()
        if self.hosts.primary:
            for leftover in commit.uncommitted_dirs(self.directory):
                log.warning("removing uncommitted checkpoint %s (a crash interrupted it)", leftover)
                leftover.rmtree()
        self.hosts.barrier()

    def newest_valid_step(self) -> int | None:
        """The newest committed step whose files match its marker; the same on every host.

        Damaged checkpoints are skipped with a warning naming them and why.

        Raises:
          CheckpointError: when checkpoints are committed but none verifies.
        """
        result: dict[str, Any] = {"step": None, "error": None}
        if self.hosts.primary:
            damaged: dict[int, str] = {}
            for step in reversed(self.steps()):
                problem = commit.verify(self.path(step))
                if problem is None:
                    result["step"] = step
                    break
                damaged[step] = f"{self.path(step)}: {problem}"
                log.warning(
                    "checkpoint %s is damaged (%s): trying an older one", self.path(step), problem
                )
            if result["step"] is not None:
                for step in damaged:
                    # Uncommitted, it no longer counts for keep_last (retention would
                    # otherwise keep it and delete good ones); the next start removes it.
                    log.warning("uncommitting damaged checkpoint %s", self.path(step))
                    (self.path(step) / commit.MARKER).unlink()
            elif damaged:
                listing = "\n  ".join(damaged.values())
                result["error"] = (
                    f"no checkpoint in {self.directory} verifies:\n  {listing}\nFix: restore "
                    f"the files from a copy, delete the damaged step directories to start over, "
                    f"or use another trainer.run_dir."
                )
        result = self.hosts.from_primary(result)
        if result["error"]:
            raise CheckpointError(result["error"])
        return result["step"]

    def resume_point(self, config: fdl.Buildable, config_hash: str) -> int | None:
        """The step to resume from: the newest checkpoint that verifies, if any.

        Raises:
          CheckpointError: when ``resume`` is ``never`` but checkpoints exist;
            when none verifies; or when the config differs from the
            checkpoint's beyond ``RESUMABLE_CHANGES`` (with the path-level
            diff) and changes are not allowed.
        """
        self.remove_uncommitted()
        steps = self.steps()
        if steps and self.settings.resume == "never":
            raise CheckpointError(
                f"{self.directory} already holds checkpoints {steps} and checkpoint.resume is "
                f"'never'. Fix: use another trainer.run_dir, or "
                f"--fdl_set=checkpoint.resume=auto to continue that run."
            )
        step = self.newest_valid_step()
        if step is None:
            return None
        written_by = commit.read_marker(self.path(step)).get("process_count", 1)
        if written_by != self.hosts.count:
            raise CheckpointError(
                f"{self.path(step)} was written by {written_by} processes and this run has "
                f"{self.hosts.count}: each host's data position belongs to the data split of "
                f"the run that wrote it, so the data stream cannot resume exactly. Fix: resume "
                f"with {written_by} processes (the same slice shape), or start a new "
                f"trainer.run_dir from its weights."
            )
        saved_json, saved_hash = self.saved_config(step)
        if saved_hash == config_hash:
            return step
        try:
            saved = load_config_json(saved_json)
        except Exception as e:  # a policy refusal or damage: either way not ours to load
            raise CheckpointError(
                f"cannot read the config saved with {self.path(step)}: {e}. Fix: resume only "
                f"from checkpoints xlafw wrote, or use another trainer.run_dir."
            ) from None
        changes = diff_configs(saved, config)
        blocking = [str(c) for c in changes if not c.path.startswith(RESUMABLE_CHANGES)]
        if blocking and not self.settings.allow_config_change:
            raise CheckpointError(
                f"the config differs from the one saved with checkpoint step {step} in "
                f"{self.directory}:\n  " + "\n  ".join(blocking) + "\nFix: run with the saved "
                f"config (--fdl_config_file={self.path(step) / CONFIG}), use another "
                f"trainer.run_dir, or pass --fdl_set=checkpoint.allow_config_change=true."
            )
        for change in changes:
            log.warning("config changed since the checkpoint: %s", change)
        return step

    def saved_config(self, step: int) -> tuple[str, str]:
        """``(config JSON, config hash)`` saved with checkpoint ``step``."""
        path = self.path(step)
        state = json.loads((path / TRAINER_STATE).read_text())
        return (path / CONFIG).read_text(), state["config_hash"]

    # -- save -------------------------------------------------------------------

    def save(
        self,
        step: int,
        state: dict[str, Any],
        data_position: StreamPosition,
        shared_files: Mapping[str, str],
    ) -> SaveTiming:
        """Writes checkpoint ``step`` (in the background with ``async_save``).

        Args:
          step: the training step the state belongs to.
          state: the state dict to save (``{"model": ..., "optimizer": ...}``).
          data_position: where this host's data stream continues.
          shared_files: small text files process 0 writes beside the tensors.

        Returns:
          How long the caller was held.

        Raises:
          CheckpointError: if the previous background save failed.
        """
        start = time.perf_counter()
        self.wait()  # at most one save in flight
        host = HostState(data_position=data_position, rng=capture_rng(self.xla_device))
        staged = saving.stage(state, self.xla_device, copy_host_tensors=self.async_save)
        job = (step, staged, host, dict(shared_files))
        if self.async_save:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="xlafw-checkpoint"
                )
            self._pending = self._executor.submit(self._write, *job)
        else:
            try:
                self._write(*job)
            except (Exception, CheckpointException) as e:  # DCP's is a BaseException
                raise CheckpointError(f"saving checkpoint step {step} failed: {e}") from e
        return SaveTiming(step=step, blocked_s=time.perf_counter() - start)

    def wait(self) -> None:
        """Blocks until the save in flight (if any) is committed.

        Raises:
          CheckpointError: if it failed; nothing of it was committed.
        """
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            pending.result()
        except (Exception, CheckpointException) as e:  # DCP's is a BaseException
            raise CheckpointError(f"a background checkpoint save failed: {e}") from e

    def close(self) -> None:
        """Waits for the save in flight and stops the writer thread."""
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    def _write(
        self, step: int, state: dict[str, Any], host: HostState, shared_files: dict[str, str]
    ) -> None:
        start = time.perf_counter()
        saving.write_step(
            self.path(step), step, state, host, shared_files, self.hosts, self.xla_device
        )
        if self.hosts.primary:
            self._prune()
        self.hosts.barrier()  # committed: every host may now report it (or exit)
        log.info(
            "checkpoint step %d committed to %s in %.2f s%s",
            step,
            self.path(step),
            time.perf_counter() - start,
            " (in the background)" if self.async_save else "",
        )

    def _prune(self) -> None:
        steps = self.steps()
        keep = set(steps[-self.settings.keep_last :]) if self.settings.keep_last > 0 else set()
        if self.settings.keep_every:
            keep |= {s for s in steps if s % self.settings.keep_every == 0}
        for step in steps:
            if step not in keep:
                (self.path(step) / commit.MARKER).unlink()  # uncommit before deleting
                self.path(step).rmtree()

    # -- restore ----------------------------------------------------------------

    def restore_state(self, step: int, state: dict[str, Any]) -> None:
        """Loads checkpoint ``step``'s tensors in place into ``state``.

        The state must have its final sharding (for the optimizer,
        ``init_state`` first), so each host reads only its shards. DCP reshards
        between process counts where it can (host tensors, DTensors).

        Raises:
          CheckpointError: if the checkpoint holds anything but tensors and
            plain values (a pickle that would import code), or cannot be read.
        """
        if self.xla_device is not None:
            import torch_xla
            import torch_xla.core.xla_model as xm

            torch_xla.sync(wait=True)
            xm.wait_device_ops()
            planner = safe_load.spmd_load_planner()
        else:
            planner = safe_load.SafeDefaultLoadPlanner()
        path = str(self.path(step))
        storage_reader = safe_load.reader(path)
        try:
            # Read first on its own: DCP swallows a reader's error into "no metadata".
            storage_reader.read_metadata()
            dist_cp.load(state, storage_reader=storage_reader, planner=planner)
        except safe_load.UnsafeCheckpointError as e:
            raise CheckpointError(
                f"refusing to load {path}: {e}. Fix: resume only from checkpoints xlafw wrote."
            ) from None
        except (CheckpointException, pickle.UnpicklingError, EOFError, OSError) as e:
            raise CheckpointError(
                f"cannot load {path}: {_first_failure(e)}. Fix: delete that step directory to "
                f"resume from an older checkpoint, or use another trainer.run_dir."
            ) from None

    def host_state(self, step: int) -> HostState:
        """This host's data position and RNG states saved with checkpoint ``step``.

        Raises:
          CheckpointError: if the checkpoint has no file for this host (it was
            written by fewer processes) or the file is not xlafw's JSON.
        """
        file = self.path(step) / host_file_name(self.hosts.index)
        if not file.exists():
            raise CheckpointError(
                f"{file} does not exist: checkpoint step {step} was written by fewer processes "
                f"than this run's {self.hosts.count}, and each host's data position is its own. "
                f"Fix: resume with the process count that wrote it."
            )
        try:
            return HostState.from_json(file.read_text())
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{file} is not a host state xlafw wrote: {e}") from None

    def restore_rng(self, host: HostState) -> None:
        """Sets this process's RNG states (XLA's too, if it has a device) from ``host``."""
        restore_rng(host.rng, self.xla_device)


def _first_failure(error: Exception) -> str:
    """One line naming what went wrong, from DCP's per-rank exception wrapper."""
    if isinstance(error, CheckpointException) and error.failures:
        error, _ = next(iter(error.failures.values()))
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first_line[:300]}"
