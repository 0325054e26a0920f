"""Loading a checkpoint never runs code from it, and damage is found before loading.

These use host tensors (no XLA runtime): the files, the marker, DCP's reader and
the unpicklers are the ones every run uses.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import sys

import pytest
import torch
from fiddle.experimental import serialization
from torch.distributed.checkpoint.metadata import Metadata

from xlafw.checkpoint import CheckpointError, CheckpointManager, commit, safe_load
from xlafw.config import build_config, config_hash
from xlafw.data.streams import StreamPosition
from xlafw.experiment import Checkpointing


class _Plant:
    """A pickle that, when loaded, creates a file: the proof that code ran."""

    def __init__(self, sentinel: str):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def _state(seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "model": {"w": torch.randn(16, 4, generator=generator)},
        "optimizer": {"step": 3, "betas": (0.9, 0.95), "lr": 1e-3},
    }


def _empty() -> dict:
    """A state to load into: DCP fills the keys it is given."""
    return {"model": {"w": torch.zeros(16, 4)}, "optimizer": {"step": 0, "betas": (), "lr": 0.0}}


def _manager(directory) -> CheckpointManager:
    return CheckpointManager(Checkpointing(keep_last=5), str(directory))


def _save(manager: CheckpointManager, step: int) -> None:
    manager.save(step, _state(step), StreamPosition(document=step), {"trainer_state.json": "{}"})


def _plant(step_dir, name: str, sentinel, *, update_marker: bool) -> None:
    """Replaces ``name`` with a code-running pickle; optionally re-signs the marker."""
    (step_dir / name).write_bytes(pickle.dumps(_Plant(str(sentinel))))
    if update_marker:
        marker = json.loads((step_dir / commit.MARKER).read_text())
        digest = commit.digest(commit.storage.path(step_dir / name))
        marker["files"][name] = {"size": digest.size, "crc32c": digest.crc32c}
        (step_dir / commit.MARKER).write_text(json.dumps(marker))


def test_a_checkpoint_round_trips_tensors_plain_values_and_the_host_state(tmp_path):
    manager = _manager(tmp_path)
    _save(manager, 7)
    state = _empty()
    manager.restore_state(7, state)
    assert torch.equal(state["model"]["w"], _state(7)["model"]["w"])
    assert state["optimizer"] == {"step": 3, "betas": (0.9, 0.95), "lr": 1e-3}
    assert manager.host_state(7).data_position == StreamPosition(document=7)


@pytest.mark.parametrize("name", [".metadata", "__0_0.distcp", "host_0.json"])
def test_a_pickle_planted_in_a_checkpoint_never_runs(tmp_path, name):
    directory, sentinel = tmp_path / "ckpt", tmp_path / "code_ran"
    manager = _manager(directory)
    _save(manager, 1)
    _plant(manager.path(1), name, sentinel, update_marker=True)  # a forged, consistent marker
    assert manager.newest_valid_step() == 1
    load = (
        manager.host_state
        if name == "host_0.json"
        else lambda s: manager.restore_state(s, _empty())
    )
    with pytest.raises(CheckpointError) as error:
        load(1)
    assert str(manager.path(1)) in str(error.value)
    if name == ".metadata":
        assert "refusing to load posix.system" in str(error.value)
    assert not sentinel.exists()


def test_metadata_that_rewrites_an_allowed_class_is_refused():
    # GLOBAL Metadata, then BUILD with a state dict: would set Metadata.evil = set.
    payload = (
        b"\x80\x02ctorch.distributed.checkpoint.metadata\nMetadata\n"
        b"N}X\x04\x00\x00\x00evilcbuiltins\nset\ns\x86b."
    )
    with pytest.raises(safe_load.UnsafeCheckpointError, match="refusing to set the state"):
        safe_load.load_metadata(io.BytesIO(payload))
    assert not hasattr(Metadata, "evil")


def test_a_saved_config_naming_a_module_outside_xlafw_is_refused_without_importing_it(
    tmp_path,
):
    config = build_config("llama_tiny_smoke")
    manager = _manager(tmp_path)
    forged = serialization.dump_json(config).replace("xlafw.optim.adamw", "this")
    trainer_state = json.dumps({"step": 1, "config_hash": "forged"})
    manager.save(
        1, _state(1), StreamPosition(), {"config.json": forged, "trainer_state.json": trainer_state}
    )
    sys.modules.pop("this", None)
    with pytest.raises(CheckpointError, match="cannot read the config saved with"):
        manager.resume_point(config, config_hash(config))
    assert "this" not in sys.modules


def test_resuming_with_another_process_count_is_refused_naming_both(tmp_path):
    config = build_config("llama_tiny_smoke")
    manager = _manager(tmp_path)
    shared = {
        "config.json": serialization.dump_json(config),
        "trainer_state.json": json.dumps({"step": 1, "config_hash": config_hash(config)}),
    }
    manager.save(1, _state(1), StreamPosition(), shared)
    assert manager.resume_point(config, config_hash(config)) == 1
    marker = json.loads((manager.path(1) / commit.MARKER).read_text())
    marker["process_count"] = 4  # as if a 4-host run wrote it
    (manager.path(1) / commit.MARKER).write_text(json.dumps(marker))
    with pytest.raises(CheckpointError, match="written by 4 processes and this run has 1"):
        manager.resume_point(config, config_hash(config))


def test_falling_back_uncommits_the_damaged_checkpoint_so_retention_ignores_it(tmp_path):
    manager = CheckpointManager(Checkpointing(keep_last=1), str(tmp_path))
    _save(manager, 10)
    manager.settings = Checkpointing(keep_last=2)
    _save(manager, 20)
    (manager.path(20) / "host_0.json").write_text("{}")
    assert manager.newest_valid_step() == 10
    assert manager.steps() == [10]
    manager.settings = Checkpointing(keep_last=1)
    _save(manager, 15)  # resumed from 10: keeps the good 15, not the damaged 20
    assert manager.steps() == [15]


def test_a_failing_background_save_surfaces_at_the_next_wait(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    manager = CheckpointManager(Checkpointing(), str(blocker / "ckpt"), async_save=True)
    manager.save(1, _state(1), StreamPosition(), {})  # returns: the write runs in the background
    with pytest.raises(CheckpointError, match="a background checkpoint save failed"):
        manager.close()
    assert manager.steps() == []


def test_a_planted_file_that_breaks_the_marker_falls_back_to_the_previous_checkpoint(
    tmp_path, caplog
):
    manager = _manager(tmp_path / "ckpt")
    _save(manager, 1)
    _save(manager, 2)
    _plant(manager.path(2), ".metadata", tmp_path / "code_ran", update_marker=False)
    assert manager.newest_valid_step() == 1
    assert "step_00000002 is damaged (.metadata has" in caplog.text
    assert not (tmp_path / "code_ran").exists()


def test_when_no_committed_checkpoint_verifies_resume_names_each_and_the_fix(tmp_path):
    manager = _manager(tmp_path)
    _save(manager, 1)
    _save(manager, 2)
    (manager.path(1) / "host_0.json").unlink()
    (manager.path(2) / "__0_0.distcp").write_bytes(b"")
    with pytest.raises(CheckpointError) as error:
        manager.newest_valid_step()
    message = str(error.value)
    assert "step_00000001: host_0.json is missing" in message
    assert "step_00000002: __0_0.distcp has 0 bytes" in message
    assert "Fix:" in message


def test_a_directory_without_its_marker_is_not_a_checkpoint_and_is_removed(tmp_path):
    manager = _manager(tmp_path)
    _save(manager, 1)
    _save(manager, 2)
    (manager.path(2) / commit.MARKER).unlink()  # as if the commit never happened
    assert manager.steps() == [1]
    manager.remove_uncommitted()
    assert not manager.path(2).exists() and manager.path(1).exists()


def test_async_save_returns_before_the_write_and_commits_on_wait(tmp_path):
    manager = CheckpointManager(Checkpointing(), str(tmp_path), async_save=True)
    state = _state(5)
    manager.save(5, state, StreamPosition(), {})
    state["model"]["w"].add_(1.0)  # the next step changes the parameters in place
    manager.close()
    restored = _empty()
    manager.restore_state(5, restored)
    assert torch.equal(restored["model"]["w"], _state(5)["model"]["w"])  # the staged copy
    assert manager.steps() == [5]


def test_retention_keeps_the_newest_and_every_nth(tmp_path):
    manager = CheckpointManager(Checkpointing(keep_last=2, keep_every=3), str(tmp_path))
    for step in range(1, 8):
        _save(manager, step)
    assert manager.steps() == [3, 6, 7]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step_00000003",
        "step_00000006",
        "step_00000007",
    ]
