"""The peak FLOP/s MFU is measured against: declared, a TPU's table value, or this host's.

On XLA's CPU backend there is no data-sheet peak: the host's float32 matmul
rate is measured at start-up and the best rate ever measured on this machine
is kept in ``~/.cache/xlafw/cpu_matmul_peak.json``.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid

import torch

log = logging.getLogger(__name__)


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
