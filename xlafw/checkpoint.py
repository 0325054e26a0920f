"""Sharded, atomic checkpoints with ``torch.distributed.checkpoint``.

Layout of one checkpoint, ``<directory>/step_00000012/``:

  .metadata, __*.distcp   model and optimizer tensors (each host writes its shards)
  trainer_state.json      step and config hash
  host_<process>.json     that host's data stream position
  rng_<process>.pt        Python, NumPy, torch and XLA RNG states of each process
  config.json             the Fiddle config of the run that wrote it
  COMMITTED               written last

A checkpoint is written into ``.step_00000012.tmp`` and renamed when complete,
so a crash at any moment leaves the previous checkpoint as the newest valid one;
only directories holding ``COMMITTED`` count (this also covers object stores,
where a rename is not atomic). Leftover temporary directories are removed.

torch_xla 2.9's ``SPMDSavePlanner`` drops tensors that are replicated over part
of the mesh (norm weights, ``('fsdp', None)`` on a 2-D mesh): replicas in one
process share ``(fqn, offset)`` and its de-duplication deletes every copy.
``DedupSPMDSavePlanner`` keeps one write item per ``(fqn, offset)``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import re
import shutil
import warnings
from typing import Any

import fiddle as fdl
import numpy as np
import torch
import torch.distributed.checkpoint as dist_cp
import torch_xla
import torch_xla.core.xla_model as xm
import torch_xla.experimental.distributed_checkpoint as xc
from etils import epath
from fiddle.experimental import serialization

from xlafw.data.streams import StreamPosition
from xlafw.diff import diff_configs
from xlafw.experiment import Checkpointing

log = logging.getLogger(__name__)

COMMITTED = "COMMITTED"
_STEP_DIR = re.compile(r"^step_(\d{8})$")

# Config paths that may differ between a checkpoint and the run resuming it.
RESUMABLE_CHANGES = ("trainer.max_steps", "trainer.log_every", "checkpoint.")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or resumed; the message says how to fix it."""


class DedupSPMDSavePlanner(xc.SPMDSavePlanner):
    """SPMDSavePlanner that keeps partially replicated tensors (see module doc)."""

    def create_local_plan(self):
        plan = super().create_local_plan()
        seen, items = set(), []
        for item in plan.items:
            key = (item.index.fqn, tuple(item.index.offset or ()))
            if key not in seen:
                seen.add(key)
                items.append(item)
        return dataclasses.replace(plan, items=items)


def _writer(path: str):
    if "://" in path:
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

        return FsspecWriter(path)
    # per_thread_copy_ahead=0: the overlapping loader asks the privateuse1
    # backend (torchax, present with jax) for CUDA-style streams and fails.
    return dist_cp.FileSystemWriter(path, per_thread_copy_ahead=0)


def _reader(path: str):
    if "://" in path:
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

        return FsspecReader(path)
    return dist_cp.FileSystemReader(path)


class CheckpointManager:
    """Saves, finds, restores and prunes checkpoints of one run.

    Args:
      settings: cadence, retention and resume policy.
      directory: the resolved checkpoint directory.
      process_index: this host (process 0 writes the shared files).
    """

    def __init__(self, settings: Checkpointing, directory: str, process_index: int = 0):
        self.settings = settings
        self.directory = epath.Path(directory)
        self.process_index = process_index

    def preflight(self, estimated_bytes: int) -> None:
        """Fails before training if the directory is unwritable or too small.

        Raises:
          CheckpointError: naming the directory and the fix.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe = self.directory / f".write_probe_{self.process_index}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise CheckpointError(
                f"cannot write checkpoints to {self.directory}: {e}. Fix: make it writable "
                f"or set --fdl_set=checkpoint.directory=PATH."
            ) from None
        if "://" not in str(self.directory):
            free = shutil.disk_usage(self.directory).free
            if free < estimated_bytes:
                raise CheckpointError(
                    f"{self.directory} has {free / 2**30:.2f} GiB free but one checkpoint needs "
                    f"about {estimated_bytes / 2**30:.2f} GiB. Fix: free space or point "
                    f"checkpoint.directory elsewhere."
                )

    def steps(self) -> list[int]:
        """Steps of the committed checkpoints, oldest first."""
        if not self.directory.exists():
            return []
        found = []
        for child in self.directory.iterdir():
            match = _STEP_DIR.match(child.name)
            if match and (child / COMMITTED).exists():
                found.append(int(match.group(1)))
        return sorted(found)

    def path(self, step: int) -> epath.Path:
        return self.directory / f"step_{step:08d}"

    def save(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        data_position: StreamPosition,
        config_json: str,
        config_hash: str,
    ) -> epath.Path:
        """Writes the checkpoint of ``step`` atomically and prunes old ones."""
        final = self.path(step)
        tmp = self.directory / f".{final.name}.tmp"
        if self.process_index == 0 and tmp.exists():
            tmp.rmtree()
        # Block until every pending graph has run: the planner reads each tensor's
        # device data, which torch_xla refuses while an async execution is in flight.
        torch_xla.sync(wait=True)
        xm.wait_device_ops()
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
        with warnings.catch_warnings():
            # Single-process SPMD needs no process group; DCP warns about it and
            # about its own internals on every save.
            warnings.simplefilter("ignore", UserWarning)
            dist_cp.save(state, storage_writer=_writer(str(tmp)), planner=DedupSPMDSavePlanner())
        torch.save(_rng_state(), str(tmp / f"rng_{self.process_index}.pt"))
        host = {"data_position": dataclasses.asdict(data_position)}
        (tmp / f"host_{self.process_index}.json").write_text(json.dumps(host))
        if self.process_index == 0:
            trainer_state = {"step": step, "config_hash": config_hash}
            (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
            (tmp / "config.json").write_text(config_json)
            _fsync_tree(tmp)
            (tmp / COMMITTED).write_text(str(step))
            if final.exists():
                final.rmtree()
            tmp.rename(final)
            self._prune()
        log.info("checkpoint saved: %s", final)
        return final

    def resume_point(self, config: fdl.Buildable, config_hash: str) -> int | None:
        """The newest checkpoint's step, if the run should resume from it.

        Raises:
          CheckpointError: when ``resume`` is ``never`` but checkpoints exist, or
            when the config differs from the checkpoint's beyond
            ``RESUMABLE_CHANGES`` (with the path-level diff) and changes are not
            allowed.
        """
        steps = self.steps()
        if not steps:
            return None
        if self.settings.resume == "never":
            raise CheckpointError(
                f"{self.directory} already holds checkpoints {steps} and checkpoint.resume is "
                f"'never'. Fix: use another trainer.run_dir, or "
                f"--fdl_set=checkpoint.resume=auto to continue that run."
            )
        step = steps[-1]
        saved_json, saved_hash = self.saved_config(step)
        if saved_hash == config_hash:
            return step
        changes = diff_configs(serialization.load_json(saved_json), config)
        blocking = [str(c) for c in changes if not c.path.startswith(RESUMABLE_CHANGES)]
        if blocking and not self.settings.allow_config_change:
            raise CheckpointError(
                f"the config differs from the one saved with checkpoint step {step} in "
                f"{self.directory}:\n  " + "\n  ".join(blocking) + "\nFix: run with the saved "
                f"config (--fdl_config_file={self.path(step) / 'config.json'}), use another "
                f"trainer.run_dir, or pass --fdl_set=checkpoint.allow_config_change=true."
            )
        for change in changes:
            log.warning("config changed since the checkpoint: %s", change)
        return step

    def data_position(self, step: int) -> StreamPosition:
        """Where this host's data stream continues after checkpoint ``step``."""
        host = json.loads((self.path(step) / f"host_{self.process_index}.json").read_text())
        return StreamPosition(**host["data_position"])

    def restore(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Loads checkpoint ``step`` in place into the (sharded) model and optimizer.

        The optimizer state must exist (``AdamW.init_state``) with its sharding,
        so each host reads only its shards. RNG states are restored too.
        """
        # As in save: the planner reads device data (shard indices), which fails
        # while a graph that writes it is still running (seen right after the
        # trainer's initialization sync, with the loader thread copying batches).
        torch_xla.sync(wait=True)
        xm.wait_device_ops()
        path = self.path(step)
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dist_cp.load(state, storage_reader=_reader(str(path)), planner=xc.SPMDLoadPlanner())
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rng_file = path / f"rng_{self.process_index}.pt"
        if rng_file.exists():
            _set_rng_state(torch.load(str(rng_file), weights_only=False))

    def saved_config(self, step: int) -> tuple[str, str]:
        """``(config JSON, config hash)`` saved with checkpoint ``step``."""
        path = self.path(step)
        state = json.loads((path / "trainer_state.json").read_text())
        return (path / "config.json").read_text(), state["config_hash"]

    def remove_incomplete(self) -> None:
        """Deletes temporary directories left by a crash mid-write."""
        if self.process_index != 0 or not self.directory.exists():
            return
        for child in self.directory.iterdir():
            if child.name.startswith(".step_") and child.name.endswith(".tmp"):
                log.warning("removing incomplete checkpoint %s (a crash interrupted it)", child)
                child.rmtree()

    def _prune(self) -> None:
        steps = self.steps()
        keep = set(steps[-self.settings.keep_last :]) if self.settings.keep_last > 0 else set()
        if self.settings.keep_every:
            keep |= {s for s in steps if s % self.settings.keep_every == 0}
        for step in steps:
            if step not in keep:
                self.path(step).rmtree()


def _fsync_tree(path: epath.Path) -> None:
    """Flushes a local checkpoint to disk before it is committed."""
    if "://" in str(path):
        return
    for root, _, files in os.walk(str(path)):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())


def _rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "xla": xm.get_rng_state(torch_xla.device()),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    xm.set_rng_state(state["xla"], torch_xla.device())
