"""The XLA runtime: device, SPMD mode, process index and count.

This is the only module that changes torch_xla's process-wide state. Import it
only after the config has been validated: importing torch_xla is cheap, but
the runtime it starts is fixed for the life of the process.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random

import numpy as np
import torch

os.environ.setdefault("PJRT_DEVICE", "CPU")

import torch_xla
import torch_xla.core.xla_model as xm
import torch_xla.debug.metrics as met
import torch_xla.runtime as xr

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RuntimeInfo:
    """What this process sees of the runtime.

    Attributes:
      device: the XLA device tensors are created on.
      device_type: ``CPU`` or ``TPU`` (PJRT's name).
      num_devices: global device count.
      process_index: this host's rank.
      process_count: number of hosts.
      spmd: whether SPMD mode is on (one program over every device).
    """

    device: torch.device
    device_type: str
    num_devices: int
    process_index: int
    process_count: int
    spmd: bool


def start(spmd: bool, compile_cache_dir: str | None = None) -> RuntimeInfo:
    """Starts the runtime, in SPMD mode when asked; returns what it sees.

    Args:
      spmd: one program over every device (required on TPU meshes).
      compile_cache_dir: XLA's persistent compilation cache, or None for none.
        It must be set before the first compilation.
    """
    if compile_cache_dir:
        xr.initialize_cache(os.path.expanduser(compile_cache_dir), readonly=False)
        log.info("persistent compilation cache: %s", compile_cache_dir)
    if spmd:
        xr.use_spmd()
    num_devices = xr.global_runtime_device_count()  # initializes the PJRT client
    info = RuntimeInfo(
        device=torch_xla.device(),
        device_type=xr.device_type(),
        num_devices=num_devices,
        process_index=xr.process_index(),
        process_count=xr.process_count(),
        spmd=spmd,
    )
    log.info(
        "XLA runtime: %s x%d, process %d/%d, spmd=%s",
        info.device_type,
        info.num_devices,
        info.process_index,
        info.process_count,
        spmd,
    )
    if info.process_count > 1:
        _start_process_group()
    return info


def _start_process_group() -> None:
    """A gloo process group over the hosts, for checkpoint coordination.

    The XLA runtime already knows every host's index and count; ``xla://``
    reuses them, so no address or rank is configured twice. DCP gathers its
    save plan and writes one ``.metadata`` through this group, and the
    checkpoint commit waits at its barriers.
    """
    import torch.distributed as dist
    import torch_xla.distributed.xla_backend  # noqa: F401 - registers the xla:// init method

    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method="xla://")
        log.info("process group: gloo over %d hosts", dist.get_world_size())


def tpu_generation() -> str | None:
    """``v4``, ``v5e``, ``v5p``, ``v6e``... for a TPU runtime, else None."""
    if xr.device_type() != "TPU":
        return None
    from torch_xla._internal import tpu

    accelerator = tpu.get_tpu_type()  # e.g. "v5litepod-16", "v5p-128", "v6e-8"
    return accelerator.split("-")[0].replace("v5litepod", "v5e")


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy, torch (CPU) and the XLA RNG."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch_xla.manual_seed(seed)


def rendezvous(tag: str) -> None:
    """Waits until every process reaches ``tag`` (no-op with one process)."""
    if xr.process_count() > 1:
        xm.rendezvous(tag)


def compile_count() -> int:
    """XLA compilations so far in this process (cache misses)."""
    return int(met.counter_value("UncachedCompile") or 0)


def compile_seconds() -> float:
    """Seconds spent compiling XLA graphs so far in this process."""
    data = met.metric_data("CompileTime")
    return data[1] / 1e9 if data else 0.0
