"""One path layer for every file xlafw writes: local paths and object stores.

A run directory may be local (``runs/llama_tiny``) or an fsspec URL
(``gs://bucket/runs/a``); every writer goes through ``etils.epath``, which
reaches ``gs://`` through gcsfs. What "atomic" means differs, and this module
hides it:

- On a local disk a file is written to a temporary name, flushed with fsync
  and renamed into place: readers see the old file or the new one.
- On an object store an object becomes visible only when its upload
  completes, so a plain write is already all-or-nothing. There is no rename
  (a "move" is a copy and a delete) and no append.

A test or a local emulator points gcsfs at another endpoint with
``STORAGE_EMULATOR_HOST``; credentials follow gcsfs' defaults, or
``FSSPEC_GCS_TOKEN=anon`` for a server that needs none.
"""

from __future__ import annotations

import os
import uuid

from etils import epath

PathLike = str | os.PathLike


def path(p: PathLike) -> epath.Path:
    """``p`` as an ``epath.Path`` (local or ``scheme://``)."""
    return epath.Path(p)


def is_remote(p: PathLike) -> bool:
    """Whether ``p`` names an object store (``gs://...``) rather than a local path."""
    return "://" in os.fspath(p)


def write_bytes(p: PathLike, data: bytes) -> None:
    """Writes ``data`` to ``p`` so readers never see a partial file."""
    target = path(p)
    if is_remote(target):
        target.write_bytes(data)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.partial"
    try:
        with open(partial, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, target)
    finally:
        if partial.exists():
            partial.unlink()


def write_text(p: PathLike, text: str) -> None:
    """``write_bytes`` for UTF-8 text."""
    write_bytes(p, text.encode())


def makedirs(p: PathLike) -> epath.Path:
    """Creates directory ``p`` (a no-op prefix on object stores); returns it."""
    directory = path(p)
    directory.mkdir(parents=True, exist_ok=True)
    return directory
