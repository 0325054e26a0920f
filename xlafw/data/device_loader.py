"""Host batches to the XLA device ahead of the step loop, on one background thread."""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Iterable, Iterator

import torch

log = logging.getLogger(__name__)
_END = object()


@dataclasses.dataclass
class _Failed:
    error: BaseException


class DeviceLoader:
    """Iterates a pipeline on a thread and copies each batch to the device.

    What torch_xla's ``MpDeviceLoader`` does for one process: the next
    ``prefetch`` batches are read, tokenized and transferred (sharded by
    ``sharding`` under SPMD) while the step runs. Two differences, the reasons
    it exists:

    * An error in the pipeline is raised in the step loop, with its message.
      ``MpDeviceLoader``'s reader thread dies with it and the loop only sees
      the data end (a bare ``StopIteration``).
    * No profiler scope per batch. torch_xla's enters a JAX named scope, whose
      first use imports jax: 0.45 s before the first batch, on the start-up
      path.

    Reading and copying share the one thread (``MpDeviceLoader`` has two, and
    holds up to 16 batches on the host and 8 on the device); the pipeline is
    ~1,000x faster than llama_tiny consumes (BUILD_NOTES.md), so a few batches
    of slack are plenty.

    Args:
      batches: yields dicts of CPU tensors.
      device: the XLA device (the SPMD virtual device under SPMD).
      sharding: the inputs' ``xs.ShardingSpec`` under SPMD, else None.
      prefetch: batches queued on the device (one more is in the thread's hand).
    """

    def __init__(
        self,
        batches: Iterable[dict[str, torch.Tensor]],
        device: torch.device,
        sharding=None,
        prefetch: int = 8,
    ):
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, got {prefetch}")
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(
            target=self._run, args=(batches, device, sharding), name="xlafw-loader", daemon=True
        )
        self._thread.start()

    def _run(self, batches, device, sharding) -> None:
        try:
            import torch_xla.core.xla_model as xm

            for batch in batches:
                if self._stop.is_set():
                    return
                with torch.no_grad():
                    moved = xm.send_cpu_data_to_device(batch, device, sharding)
                if not self._put(moved):
                    return
            self._put(_END)
        except BaseException as error:  # raised again in the step loop
            self._put(_Failed(error))

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if item is _END or isinstance(item, _Failed):
            self._finished = True
            if isinstance(item, _Failed):
                raise item.error
            raise StopIteration
        return item

    def close(self) -> None:
        """Stops the thread (it finishes the batch in hand) and drops the queued batches."""
        self._stop.set()
        self._finished = True
        self._thread.join(timeout=10)
        if self._thread.is_alive():
            log.warning("the data loader thread is still reading after 10 s; leaving it")
        while not self._queue.empty():
            self._queue.get_nowait()
