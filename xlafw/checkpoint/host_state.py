"""One host's own checkpoint file: its RNG states and data position, as JSON.

Each process writes ``host_<process>.json`` beside the shared tensors. It is
JSON, not a pickle, so reading a checkpoint never runs code: Python's and
NumPy's Mersenne Twister states are lists of integers, torch's CPU generator
state is base64 bytes, and the XLA generator's state is one integer seed.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import random
from typing import Any

import numpy as np
import torch

from xlafw.data.streams import StreamPosition


def host_file_name(process_index: int) -> str:
    return f"host_{process_index}.json"


def capture_rng(xla_device: torch.device | None) -> dict[str, Any]:
    """This process's RNG states as JSON-ready values.

    Args:
      xla_device: the XLA device whose generator to include; None when the
        state lives on the host only (no XLA runtime in this process).
    """
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(mt), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }
    if xla_device is not None:
        import torch_xla.core.xla_model as xm

        state["xla"] = int(xm.get_rng_state(xla_device))
    return state


def restore_rng(state: dict[str, Any], xla_device: torch.device | None) -> None:
    """Sets this process's RNG states from ``capture_rng``'s values."""
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    raw = np.frombuffer(base64.b64decode(state["torch"]), dtype=np.uint8).copy()
    torch.set_rng_state(torch.from_numpy(raw))
    if xla_device is not None and "xla" in state:
        import torch_xla.core.xla_model as xm

        xm.set_rng_state(state["xla"], xla_device)


@dataclasses.dataclass(frozen=True)
class HostState:
    """What one process saves of its own.

    Attributes:
      data_position: where its data stream continues.
      rng: its RNG states (``capture_rng``).
    """

    data_position: StreamPosition
    rng: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(
            {"data_position": dataclasses.asdict(self.data_position), "rng": self.rng}
        )

    @classmethod
    def from_json(cls, text: str) -> HostState:
        raw = json.loads(text)
        return cls(data_position=StreamPosition(**raw["data_position"]), rng=raw["rng"])
