"""One host of a multi-process checkpoint test (started by test_multihost_checkpoint.py).

Each process joins a real gloo process group on 127.0.0.1 and holds its shard
of a DTensor state (``Shard(0)`` over every rank), as each host of a pod holds
its shards. It then runs one action through xlafw's CheckpointManager:

  save STEPS        save each step, then print the committed steps
  crash RANK STEP   as save, but process RANK dies before the commit barrier of STEP
  restore STEP      load STEP into a zeroed state and print whether it equals the saved one
  resume            print the newest valid step after removing uncommitted leftovers
  agree RANK        print whether any host stops when only process RANK got a signal

Usage: multihost_worker.py RANK WORLD PORT DIRECTORY ACTION [ARGS...]
"""

from __future__ import annotations

import datetime
import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.tensor import DeviceMesh, Shard, distribute_tensor

from xlafw.checkpoint import CheckpointManager, Hosts
from xlafw.data.streams import StreamPosition
from xlafw.experiment import Checkpointing

ROWS = 24  # divisible by 1, 2, 3, 4 and 8 processes


def full_state(step: int) -> dict[str, torch.Tensor]:
    """The unsharded state of ``step``: the same on every process."""
    generator = torch.Generator().manual_seed(step)
    return {
        "weight": torch.randn(ROWS, 8, generator=generator),
        "bias": torch.randn(ROWS, generator=generator),
    }


def sharded(state: dict[str, torch.Tensor], mesh: DeviceMesh) -> dict:
    return {"model": {k: distribute_tensor(v, mesh, [Shard(0)]) for k, v in state.items()}}


class CrashingHosts(Hosts):
    """Hosts whose process ``crash_rank`` exits at the commit barrier of ``crash_step``."""

    crash_rank: int = -1
    crash_step: int = -1
    current_step: int = 0
    barriers_in_step: int = 0

    def barrier(self) -> None:
        cls = type(self)
        cls.barriers_in_step += 1
        # The second barrier of a save follows every host's writes: the commit point.
        if (self.index, cls.current_step, cls.barriers_in_step) == (
            cls.crash_rank,
            cls.crash_step,
            2,
        ):
            print(f"CRASHING rank {self.index} before the commit of step {cls.current_step}")
            sys.stdout.flush()
            os._exit(17)
        super().barrier()


def main(rank: int, world: int, port: int, directory: str, action: str, args: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(
        "gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60)
    )
    mesh = DeviceMesh("cpu", list(range(world)))
    settings = Checkpointing(keep_last=5)
    if action in ("save", "crash"):
        hosts = CrashingHosts(index=rank, count=world)
        if action == "crash":
            CrashingHosts.crash_rank, CrashingHosts.crash_step = int(args[0]), int(args[1])
            steps = [1, 2]
        else:
            steps = [int(s) for s in args]
        manager = CheckpointManager(settings, directory, hosts)
        for step in steps:
            CrashingHosts.current_step, CrashingHosts.barriers_in_step = step, 0
            manager.save(
                step,
                sharded(full_state(step), mesh),
                StreamPosition(document=10 * step + rank),
                {"trainer_state.json": json.dumps({"step": step})},
            )
        print("COMMITTED", json.dumps(manager.steps()))
    elif action == "restore":
        step = int(args[0])
        manager = CheckpointManager(settings, directory, Hosts.from_process_group())
        zeros = {k: torch.zeros_like(v) for k, v in full_state(step).items()}
        state = sharded(zeros, mesh)
        manager.restore_state(step, state)
        expected = sharded(full_state(step), mesh)["model"]
        equal = all(
            torch.equal(state["model"][k].to_local(), expected[k].to_local()) for k in expected
        )
        print("RESTORED_EQUAL", equal)
    elif action == "agree":
        hosts = Hosts.from_process_group()
        print("ANY_STOPS", hosts.any(rank == int(args[0])), hosts.any(False))
    elif action == "resume":
        manager = CheckpointManager(settings, directory, Hosts.from_process_group())
        manager.remove_uncommitted()
        print("NEWEST", manager.newest_valid_step())
    dist.destroy_process_group()


if __name__ == "__main__":
    rank, world, port, directory, action, *args = sys.argv[1:]
    main(int(rank), int(world), int(port), directory, action, args)
