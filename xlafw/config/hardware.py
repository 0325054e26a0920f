"""The devices a config is checked against: TPU types by name, or this machine.

Nothing here starts an XLA runtime. A TPU slice is named the way Cloud TPU
names it (``v5p-256``); the number counts TensorCores on v4 and v5p (two per
chip) and chips on v5e and v6e. xlafw shards over chips, so ``v5p-256`` is
128 devices. Several slices (``num_slices``, joined by the data-center
network) multiply the chips. On XLA's CPU backend the devices are
``CPU_NUM_DEVICES`` virtual devices sharing this machine's available memory.
"""

from __future__ import annotations

import dataclasses
import os
import re

from xlafw.config.errors import ConfigError, suggest

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class TpuType:
    """One TPU generation.

    Attributes:
      cores_per_chip: how many units of the slice name's number make a chip.
      hbm_bytes: high-bandwidth memory per chip.
      peak_bf16_flops: peak dense bfloat16 FLOP/s per chip.
    """

    cores_per_chip: int
    hbm_bytes: int
    peak_bf16_flops: float


TPU_TYPES = {
    "v4": TpuType(cores_per_chip=2, hbm_bytes=32 * GiB, peak_bf16_flops=275e12),
    "v5e": TpuType(cores_per_chip=1, hbm_bytes=16 * GiB, peak_bf16_flops=197e12),
    "v5litepod": TpuType(cores_per_chip=1, hbm_bytes=16 * GiB, peak_bf16_flops=197e12),
    "v5p": TpuType(cores_per_chip=2, hbm_bytes=95 * GiB, peak_bf16_flops=459e12),
    "v6e": TpuType(cores_per_chip=1, hbm_bytes=32 * GiB, peak_bf16_flops=918e12),
}
_TARGET = re.compile(r"^([a-z0-9]+)-(\d+)$")


@dataclasses.dataclass(frozen=True)
class Devices:
    """The devices a config is validated and planned for.

    Attributes:
      description: what they are, for messages ("v5p-256 (128 chips)").
      count: how many devices the mesh spans; None when it cannot be known
        before the runtime starts (TPU without ``--target``/``--num_devices``).
      memory_bytes: memory of one device; None when unknown.
      peak_flops: peak bfloat16 FLOP/s of one device; None when unknown.
    """

    description: str
    count: int | None
    memory_bytes: int | None = None
    peak_flops: float | None = None


def backend() -> str:
    """The PJRT backend the environment selects (``CPU`` unless ``PJRT_DEVICE`` says)."""
    return os.environ.get("PJRT_DEVICE", "CPU").upper()


def detected_device_count() -> int | None:
    """The device count implied by the environment, without starting XLA.

    On XLA's CPU backend it is ``CPU_NUM_DEVICES`` (default 1). On TPU the
    count is only known to the runtime; pass ``--num_devices`` or ``--target``
    to check a mesh before launching.
    """
    if backend() == "CPU":
        raw = os.environ.get("CPU_NUM_DEVICES", "1")
        try:
            count = int(raw)
        except ValueError:
            count = 0
        if count < 1:
            raise ConfigError(
                f"CPU_NUM_DEVICES={raw}: XLA's CPU backend needs a whole number of devices >= 1. "
                f"Fix: CPU_NUM_DEVICES=8 (or unset it for one device)."
            )
        return count
    return None


def available_memory_bytes() -> int | None:
    """``MemAvailable`` from /proc/meminfo, or None where there is no such file."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def tpu_target(name: str, num_slices: int = 1) -> Devices:
    """The devices of ``num_slices`` TPU slices named like ``v5p-256`` or ``v6e-64``.

    Raises:
      ConfigError: for an unknown generation, a size that is not whole chips,
        or fewer than one slice.
    """
    match = _TARGET.match(name.strip().lower())
    generation = match.group(1) if match else name
    if not match or generation not in TPU_TYPES:
        raise ConfigError(
            f"--target={name}: not a TPU slice name.{suggest(generation, TPU_TYPES)} "
            f"Fix: use GENERATION-SIZE with GENERATION one of {', '.join(TPU_TYPES)}, "
            f"as in v5p-256."
        )
    tpu, size = TPU_TYPES[generation], int(match.group(2))
    if size < 1 or size % tpu.cores_per_chip:
        raise ConfigError(
            f"--target={name}: {generation} sizes count TensorCores, {tpu.cores_per_chip} "
            f"per chip, so the size must be a positive multiple of {tpu.cores_per_chip}."
        )
    if num_slices < 1:
        raise ConfigError(f"--num_slices={num_slices}: must be >= 1.")
    chips = size // tpu.cores_per_chip * num_slices
    slices = f"{num_slices} x {name}" if num_slices > 1 else name
    return Devices(
        description=f"{slices} ({chips} chips, {tpu.hbm_bytes / GiB:.0f} GiB HBM each)",
        count=chips,
        memory_bytes=tpu.hbm_bytes,
        peak_flops=tpu.peak_bf16_flops,
    )


def resolve_devices(
    num_devices: int | None = None, target: str | None = None, num_slices: int = 1
) -> Devices:
    """The devices to check against: a declared target, a count, or this machine.

    Args:
      num_devices: a declared device count (``--num_devices``); None to detect.
      target: a TPU slice name (``--target``); wins over detection.
      num_slices: how many ``target`` slices (``--num_slices``).

    Returns:
      The devices, with their memory when it is known: the TPU type's HBM,
      or on XLA's CPU backend this machine's available memory divided by the
      device count (virtual CPU devices share one host's RAM).

    Raises:
      ConfigError: for a bad target, a count below 1, or a count that
        contradicts the target.
    """
    if num_devices is not None and num_devices < 1:
        raise ConfigError(
            f"--num_devices={num_devices}: a run needs at least one device. Fix: the number of "
            f"devices to plan for, e.g. --num_devices=8, or --target=v5p-256."
        )
    if target:
        devices = tpu_target(target, num_slices)
        if num_devices is not None and num_devices != devices.count:
            raise ConfigError(
                f"--num_devices={num_devices} contradicts --target={target}: "
                f"{devices.description}. Fix: pass only one of them."
            )
        return devices
    if num_slices != 1:
        raise ConfigError(
            f"--num_slices={num_slices} needs --target=SLICE (the type of each slice)."
        )
    count = num_devices if num_devices is not None else detected_device_count()
    declared = f" (--num_devices={num_devices})" if num_devices is not None else ""
    if backend() != "CPU":
        return Devices(description=f"{backend()} devices{declared}", count=count)
    memory = available_memory_bytes()
    count = count or 1
    return Devices(
        description=f"{count} CPU device(s){declared} sharing this machine's available memory",
        count=count,
        memory_bytes=memory // count if memory is not None else None,
    )
