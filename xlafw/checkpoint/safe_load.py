"""Loading a checkpoint without running code from it.

A checkpoint directory is data, and may come from someone else. Three places
in ``torch.distributed.checkpoint`` would unpickle whatever they find:

- its ``.metadata`` file is read with ``pickle.load``: ``SafeFileSystemReader``
  and ``SafeFsspecReader`` read it with an unpickler that only resolves DCP's
  own metadata classes, ``torch.Size`` and torch's dtype/layout constants;
- non-tensor state (optimizer hyper-parameters) is stored as ``torch.save``
  bytes: the load planners below read it with ``weights_only=True``;
- tensors are read by DCP's reader with ``weights_only=True`` already.

xlafw's own files beside them (RNG states, data positions, the trainer state)
are JSON.
"""

from __future__ import annotations

import io
import pickle
from typing import Any, ClassVar

import torch
import torch.distributed.checkpoint as dist_cp
from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from xlafw import storage

_DCP_CLASSES = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in (
        "Metadata",
        "StorageMeta",
        "MetadataIndex",
        "ChunkStorageMetadata",
        "TensorProperties",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # a name -> torch.layout lookup
    ("pathlib", "PosixPath"),  # StorageMeta.checkpoint_id of a local save
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint file asks to import something a DCP metadata file never holds."""


class RestrictedUnpickler(pickle._Unpickler):
    """Resolves only the globals DCP's metadata is made of; refuses the rest.

    It is the pure-Python unpickler, so that ``BUILD`` can be checked too: a
    pickle may otherwise fetch an allowed class and ``BUILD`` it with a state
    dict, which sets attributes on the class itself (``Metadata.x = set``) for
    the whole process. Speed does not matter for a metadata file.
    """

    dispatch: ClassVar[dict] = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _DCP_CLASSES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(
            getattr(torch, name, None), torch.dtype | torch.layout | torch.memory_format
        ):
            return getattr(torch, name)
        raise UnsafeCheckpointError(
            f"refusing to load {module}.{name}: a checkpoint's metadata may only hold "
            f"torch.distributed.checkpoint's metadata classes"
        )

    def load_build(self) -> None:
        target = self.stack[-2]
        if isinstance(target, type) or not type(target).__module__.startswith(
            ("torch.distributed.checkpoint", "pathlib", "collections", "builtins")
        ):
            raise UnsafeCheckpointError(
                f"refusing to set the state of {target!r}: DCP's metadata only sets the "
                f"fields of its own objects"
            )
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = load_build


def load_metadata(stream: io.IOBase) -> Metadata:
    """Reads a DCP ``.metadata`` stream with the restricted unpickler."""
    metadata = RestrictedUnpickler(stream).load()
    if not isinstance(metadata, Metadata):
        raise UnsafeCheckpointError(f"expected DCP Metadata, found {type(metadata).__name__}")
    return metadata


def _read_metadata(reader: dist_cp.FileSystemReader, rank: int | None) -> Metadata:
    with reader.fs.create_stream(reader._get_metadata_path(rank), "rb") as stream:
        metadata = load_metadata(stream)
    if getattr(metadata, "storage_meta", None) is None:
        metadata.storage_meta = StorageMeta()
    metadata.storage_meta.load_id = reader.load_id
    return metadata


class SafeFileSystemReader(dist_cp.FileSystemReader):
    """DCP's local reader with a restricted metadata unpickler."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        return _read_metadata(self, kwargs.get("rank"))


class SafeFsspecReader(FsspecReader):
    """DCP's fsspec (``gs://``) reader with a restricted metadata unpickler."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        return _read_metadata(self, kwargs.get("rank"))


def reader(path: str) -> dist_cp.FileSystemReader:
    """A safe DCP reader for a local path or an fsspec URL."""
    return SafeFsspecReader(path) if storage.is_remote(path) else SafeFileSystemReader(path)


def _load_bytes_weights_only(planner, read_item, value: io.BytesIO) -> None:
    from torch.distributed.checkpoint._nested_dict import set_element

    set_element(
        planner.original_state_dict,
        planner.mappings[read_item.dest_index.fqn],
        torch.load(value, weights_only=True),
    )


class SafeDefaultLoadPlanner(dist_cp.DefaultLoadPlanner):
    """DCP's planner for host tensors, reading non-tensor state with ``weights_only``."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        _load_bytes_weights_only(self, read_item, value)


def spmd_load_planner():
    """torch_xla's SPMD load planner, reading non-tensor state with ``weights_only``."""
    from torch_xla.experimental.distributed_checkpoint import SPMDLoadPlanner

    class SafeSPMDLoadPlanner(SPMDLoadPlanner):
        def load_bytes(self, read_item, value: io.BytesIO) -> None:
            _load_bytes_weights_only(self, read_item, value)

    return SafeSPMDLoadPlanner()
