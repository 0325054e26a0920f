"""DeviceLoader: host batches copied to the XLA device on a background thread."""

from __future__ import annotations

import pytest
import torch
import torch_xla

from xlafw.data.device_loader import DeviceLoader


def _batches(n, fail_after=None):
    for i in range(n):
        if fail_after is not None and i == fail_after:
            raise ValueError("the data source yielded no documents. Fix: check its paths.")
        yield {"input_ids": torch.full((2, 8), i), "labels": torch.full((2, 8), -i)}


def test_batches_arrive_on_the_device_in_order_then_the_data_ends():
    loader = DeviceLoader(_batches(6), torch_xla.device(), prefetch=2)
    got = list(loader)
    assert len(got) == 6
    assert all(b["input_ids"].device.type == "xla" for b in got)
    assert [int(b["input_ids"][0, 0]) for b in got] == list(range(6))
    assert [int(b["labels"][1, 7]) for b in got] == [-i for i in range(6)]
    with pytest.raises(StopIteration):
        next(loader)


def test_a_pipeline_error_is_raised_in_the_step_loop_with_its_message():
    loader = DeviceLoader(_batches(6, fail_after=2), torch_xla.device())
    assert int(next(loader)["input_ids"][0, 0]) == 0
    assert int(next(loader)["input_ids"][0, 0]) == 1
    with pytest.raises(ValueError, match="yielded no documents"):
        next(loader)
    with pytest.raises(StopIteration):
        next(loader)


def test_close_stops_a_thread_blocked_on_a_full_queue():
    loader = DeviceLoader(_batches(10_000), torch_xla.device(), prefetch=1)
    next(loader)
    loader.close()
    assert not loader._thread.is_alive()


def test_next_after_close_ends_instead_of_waiting_and_prefetch_must_be_positive():
    loader = DeviceLoader(_batches(100), torch_xla.device())
    loader.close()
    with pytest.raises(StopIteration):
        next(loader)
    with pytest.raises(ValueError, match="prefetch"):
        DeviceLoader(_batches(1), torch_xla.device(), prefetch=0)
