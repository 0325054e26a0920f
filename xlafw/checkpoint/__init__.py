"""Checkpoints that survive a pod: sharded, committed by a marker, verified, safe to load.

``manager.py`` saves and restores; ``commit.py`` is the commit protocol;
``safe_load.py`` keeps code out of loading; ``host_state.py`` is each host's
own JSON file; ``coordination.py`` is how the hosts agree.
"""

from xlafw.checkpoint.commit import MARKER
from xlafw.checkpoint.coordination import Hosts
from xlafw.checkpoint.manager import (
    RESUMABLE_CHANGES,
    CheckpointError,
    CheckpointManager,
    SaveTiming,
)

__all__ = [
    "MARKER",
    "RESUMABLE_CHANGES",
    "CheckpointError",
    "CheckpointManager",
    "Hosts",
    "SaveTiming",
]
