"""The dtypes a config may name, in one place."""

from __future__ import annotations

from typing import Literal

import torch

DtypeName = Literal["float32", "bfloat16"]
TORCH_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def itemsize(name: str) -> int:
    """Bytes of one element of the dtype ``name`` (``float32`` -> 4)."""
    return TORCH_DTYPES[name].itemsize
