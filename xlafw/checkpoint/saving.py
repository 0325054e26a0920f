"""Writing one checkpoint step: staging the state, DCP, each host's files, the commit.

``stage`` runs on the step loop's thread (it must finish before the next step
changes a parameter); ``write_step`` runs there too, or on the manager's
writer thread for an async save. The protocol itself is described in
``commit.py``.

torch_xla 2.9's ``SPMDSavePlanner`` drops tensors that are replicated over part
of the mesh (norm weights, ``('fsdp', None)`` on a 2-D mesh): replicas in one
process share ``(fqn, offset)`` and its de-duplication deletes every copy.
``dedup_spmd_save_planner`` keeps one write item per ``(fqn, offset)``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed.checkpoint as dist_cp
from etils import epath
from torch.utils import _pytree

from xlafw import storage
from xlafw.checkpoint import commit
from xlafw.checkpoint.coordination import Hosts
from xlafw.checkpoint.host_state import HostState, host_file_name


def stage(
    state: dict[str, Any], xla_device: torch.device | None, *, copy_host_tensors: bool
) -> dict[str, Any]:
    """The state to write, copied to host memory before the next step can change it.

    XLA state is always staged, async or not: one batched transfer of this
    host's shards (with their global offsets) takes half the time of the SPMD
    planner's tensor-by-tensor copies (BUILD_NOTES.md, "Async save").

    Args:
      state: the state dict (``{"model": ..., "optimizer": ...}``).
      xla_device: the XLA device the state lives on, or None for host tensors.
      copy_host_tensors: copy host tensors too (an async save of host state,
        which the caller may change while the copy is written).
    """
    if xla_device is not None:
        import torch_xla
        import torch_xla.core.xla_model as xm
        from torch_xla.experimental.distributed_checkpoint._helpers import (
            _sharded_cpu_state_dict,
        )

        # Reading device data fails while an execution that writes it is in flight.
        torch_xla.sync(wait=True)
        xm.wait_device_ops()
        return _sharded_cpu_state_dict(state)
    if not copy_host_tensors:
        return state
    return _pytree.tree_map_only(torch.Tensor, lambda t: t.detach().clone(), state)


def write_step(
    step_dir: epath.Path,
    step: int,
    state: dict[str, Any],
    host: HostState,
    shared_files: Mapping[str, str],
    hosts: Hosts,
    xla_device: torch.device | None,
) -> None:
    """Every host writes its part of ``step_dir``; process 0 then commits it.

    Args:
      step_dir: the step's directory (replaced if it exists).
      step: the training step, recorded in the marker.
      state: the staged state (``stage``).
      host: this host's data position and RNG states.
      shared_files: small text files process 0 writes beside the tensors.
      hosts: this process among the writers.
      xla_device: as in ``stage`` (chooses the SPMD planner).

    Raises:
      FileNotFoundError: if a host's file is missing at the commit (nothing
        is committed); a torch.distributed error if a host died at a barrier.
    """
    if hosts.primary and step_dir.exists():
        if (step_dir / commit.MARKER).exists():
            (step_dir / commit.MARKER).unlink()  # uncommit first: never a mixed step
        step_dir.rmtree()
    hosts.barrier()  # nobody writes into a directory being removed
    planner = dedup_spmd_save_planner() if xla_device is not None else dist_cp.DefaultSavePlanner()
    metadata = dist_cp.save(state, storage_writer=_writer(str(step_dir)), planner=planner)
    storage.write_text(step_dir / host_file_name(hosts.index), host.to_json())
    if hosts.primary:
        for name, text in shared_files.items():
            storage.write_text(step_dir / name, text)
    hosts.barrier()  # every host's files are written
    if hosts.primary:
        data_files = {info.relative_path for info in (metadata.storage_data or {}).values()}
        host_files = {host_file_name(i) for i in range(hosts.count)}
        required = sorted({".metadata", *data_files, *host_files, *shared_files})
        commit.write_marker(step_dir, step, required, hosts.count)
        _fsync_directory(step_dir)


def dedup_spmd_save_planner():
    """torch_xla's SPMD save planner, keeping partially replicated tensors (module doc)."""
    import torch_xla.experimental.distributed_checkpoint as xc

    class DedupSPMDSavePlanner(xc.SPMDSavePlanner):
        def create_local_plan(self):
            plan = super().create_local_plan()
            seen, items = set(), []
            for item in plan.items:
                key = (item.index.fqn, tuple(item.index.offset or ()))
                if key not in seen:
                    seen.add(key)
                    items.append(item)
            return dataclasses.replace(plan, items=items)

    return DedupSPMDSavePlanner()


def _writer(path: str):
    if storage.is_remote(path):
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

        return FsspecWriter(path)
    # per_thread_copy_ahead=0: the overlapping loader asks the privateuse1
    # backend (torchax, present with jax) for CUDA-style streams and fails.
    return dist_cp.FileSystemWriter(path, per_thread_copy_ahead=0)


def _fsync_directory(path: epath.Path) -> None:
    """Makes a local directory's new entries durable (the marker, written last)."""
    if storage.is_remote(path):
        return
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
