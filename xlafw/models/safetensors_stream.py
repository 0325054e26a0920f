"""Writing safetensors files one tensor at a time (``save_hf_weights``' file layer).

``safetensors.torch.save_file`` needs every tensor of a file in host memory at
once; a 70B export would hold a whole 5 GB file. The format is simple enough to
stream: the header (names, dtypes, shapes, byte offsets) is known before any
value is gathered, so each tensor is written as soon as it reaches the host.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator

import torch

from xlafw import storage
from xlafw.models.hf_config import Stacked

SAFETENSORS_DTYPES = {
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.float64: "F64",
}


def plan_files(
    params: list[tuple[str, torch.Tensor]], max_shard_bytes: int
) -> list[list[tuple[str, torch.Tensor]]]:
    """Groups parameters, in model order, into files of at most ``max_shard_bytes``.

    A tensor larger than the limit gets a file of its own, as in ``transformers``.
    """
    groups: list[list[tuple[str, torch.Tensor]]] = [[]]
    size = 0
    for name, param in params:
        nbytes = param.numel() * param.element_size()
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, param))
        size += nbytes
    return groups


def write_safetensors(
    path: storage.PathLike,
    tensors: list[tuple[str, torch.Tensor]],
    gathered: Iterator[torch.Tensor],
    names: Callable[[str, tuple[int, ...]], tuple[str, ...]] = lambda name, shape: (name,),
) -> None:
    """Streams one safetensors file: the header first (shapes are known), then each tensor.

    ``safetensors.torch.save_file`` needs every tensor of a file in memory at
    once; streaming keeps one. Layout: little-endian u64 header length, JSON
    header (padded with spaces to 8 bytes), then the tensors' bytes in order.
    ``path`` may be local or an fsspec URL; the file appears whole or not at all
    (``storage.open_atomic``).

    Args:
      path: the file to write.
      tensors: ``(name, tensor)`` in file order (the tensors give shapes and dtypes).
      gathered: the same tensors' values on the host, in the same order.
      names: the stored name(s) of a tensor. ``Stacked`` names store it as
        its slices along the first dimension, one per name (a contiguous
        ``[experts, ...]`` tensor is its experts' bytes back to back, so the
        stream is unchanged).
    """
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, param in tensors:
        stored = names(name, tuple(param.shape))
        stacked = isinstance(stored, Stacked)
        if len(stored) != (param.shape[0] if stacked else 1):
            raise ValueError(
                f"{name} {list(param.shape)} cannot be stored as {len(stored)} tensors {stored}"
            )
        shape = list(param.shape[1:]) if stacked else list(param.shape)
        nbytes = param.numel() * param.element_size() // len(stored)
        for stored_name in stored:
            header[stored_name] = {
                "dtype": SAFETENSORS_DTYPES[param.dtype],
                "shape": shape,
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    with storage.open_atomic(path) as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for tensor in gathered:
            f.write(memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy()))
