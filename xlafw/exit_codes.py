"""Process exit codes, chosen so a cluster's restart policy does the right thing.

xpk's JobSet fails the job for every container exit code except 42 and
127-255 (signals among them), and restarts the JobSet for those, up to
``--max_restarts`` times. So the one outcome that should be retried, a preemption after which the
trainer saved a checkpoint, exits 42; a config error or a diverged run must
never be retried, and exits with a small code of its own.

| code | meaning                                              | restarted |
|------|------------------------------------------------------|-----------|
| 0    | finished at ``max_steps``, or nothing left to train  | no        |
| 1    | an unexpected error (a bug, a lost device)           | no        |
| 2    | configuration or input error; nothing was trained    | no        |
| 3    | non-finite loss; the newest good checkpoint is kept  | no        |
| 4    | an input or resource failed while running (a data    | no        |
|      | file vanished, a full disk, device out of memory)    |           |
| 42   | stopped by SIGTERM/SIGINT after saving a checkpoint  | yes       |
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Exit codes of ``xlafw.main`` and ``xlafw.launch`` (see the module table)."""

    OK = 0
    ERROR = 1
    CONFIG_ERROR = 2
    NON_FINITE_LOSS = 3
    RUNTIME_INPUT = 4
    PREEMPTED = 42
