"""The checkpoint commit protocol with several real processes (gloo on 127.0.0.1).

torch_xla cannot run several SPMD processes on its CPU backend, so each host
here holds its shards as a DTensor on the CPU; the protocol, the process group
and DCP are the ones a pod runs (tests/multihost_worker.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

WORKER = Path(__file__).with_name("multihost_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hosts(world: int, directory: Path, *action: str) -> list[subprocess.CompletedProcess]:
    """Runs ``world`` worker processes to completion; returns them in rank order."""
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), *map(str, (rank, world, port, directory)), *action],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), "GLOO_SOCKET_IFNAME": "lo"},
        )
        for rank in range(world)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def _value(proc: subprocess.CompletedProcess, key: str) -> str:
    for line in proc.stdout.splitlines():
        if line.startswith(key + " "):
            return line.split(" ", 1)[1]
    raise AssertionError(f"{key} not printed:\n{proc.stdout}\n{proc.stderr[-3000:]}")


def _files(step_dir: Path) -> set[str]:
    return {p.name for p in step_dir.iterdir()}


@pytest.mark.parametrize("world", [2, 4])
def test_every_host_writes_its_files_and_one_metadata_before_the_commit(tmp_path, world):
    procs = _hosts(world, tmp_path, "save", "1", "2")
    assert all(p.returncode == 0 for p in procs), [p.stderr[-2000:] for p in procs]
    assert {_value(p, "COMMITTED") for p in procs} == {"[1, 2]"}
    step_dir = tmp_path / "step_00000002"
    files = _files(step_dir)
    assert {f"host_{r}.json" for r in range(world)} <= files
    assert {f"__{r}_0.distcp" for r in range(world)} <= files  # each host wrote its shards
    assert sorted(f for f in files if "metadata" in f) == [".metadata"]
    marker = json.loads((step_dir / "COMMITTED").read_text())
    assert set(marker["files"]) == files - {"COMMITTED"}
    positions = [json.loads((step_dir / f"host_{r}.json").read_text()) for r in range(world)]
    assert [p["data_position"]["document"] for p in positions] == [20 + r for r in range(world)]


@pytest.mark.parametrize("crash_rank", [0, 1])
def test_a_host_dying_before_the_commit_barrier_leaves_the_previous_checkpoint_newest(
    tmp_path, crash_rank
):
    procs = _hosts(2, tmp_path, "crash", str(crash_rank), "2")
    assert procs[crash_rank].returncode == 17
    assert "CRASHING" in procs[crash_rank].stdout
    assert procs[1 - crash_rank].returncode != 0  # the survivor's barrier fails, no hang
    assert (tmp_path / "step_00000002").exists()
    assert not (tmp_path / "step_00000002" / "COMMITTED").exists()
    assert (tmp_path / "step_00000001" / "COMMITTED").exists()

    resumed = _hosts(2, tmp_path, "resume")
    assert [_value(p, "NEWEST") for p in resumed] == ["1", "1"]
    assert not (tmp_path / "step_00000002").exists()  # process 0 removed the leftover


def test_a_checkpoint_of_four_hosts_restores_into_two_and_three(tmp_path):
    saved = _hosts(4, tmp_path, "save", "3")
    assert all(p.returncode == 0 for p in saved), [p.stderr[-2000:] for p in saved]
    for world in (2, 3):
        restored = _hosts(world, tmp_path, "restore", "3")
        assert [_value(p, "RESTORED_EQUAL") for p in restored] == ["True"] * world


def test_a_signal_on_one_host_stops_every_host_after_the_same_step(tmp_path):
    procs = _hosts(3, tmp_path, "agree", "2")
    assert [_value(p, "ANY_STOPS") for p in procs] == ["True False"] * 3
