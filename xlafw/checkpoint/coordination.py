"""How the hosts of one run agree: a barrier and one decision shared by all.

With one process there is nothing to agree on. With several, the runtime has
created a ``torch.distributed`` process group (gloo, over the hosts' network;
``xlafw.runtime.start``), and DCP uses the same group to gather the save plan
and write one ``.metadata``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class Hosts:
    """This process's place among the run's processes.

    Attributes:
      index: this process's rank (0 writes the shared files and the marker).
      count: how many processes write each checkpoint.
    """

    index: int = 0
    count: int = 1

    @classmethod
    def from_process_group(cls) -> Hosts:
        """The default process group's rank and size, or a single host without one."""
        if dist.is_available() and dist.is_initialized():
            return cls(index=dist.get_rank(), count=dist.get_world_size())
        return cls()

    @property
    def primary(self) -> bool:
        return self.index == 0

    def barrier(self) -> None:
        """Returns once every process has called it (raises if one died)."""
        if self.count > 1:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any process (one small all-reduce per call)."""
        if self.count == 1:
            return flag
        value = torch.tensor([int(flag)])
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def from_primary(self, value: Any) -> Any:
        """Process 0's ``value`` on every process (a small JSON-like object)."""
        if self.count == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
