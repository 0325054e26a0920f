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

import contextlib
import os
import uuid
from collections.abc import Iterator
from typing import BinaryIO

from etils import epath

PathLike = str | os.PathLike


def path(p: PathLike) -> epath.Path:
    """``p`` as an ``epath.Path`` (local or ``scheme://``)."""
    return epath.Path(p)


def is_remote(p: PathLike) -> bool:
    """Whether ``p`` names an object store (``gs://...``) rather than a local path."""
    return "://" in os.fspath(p)


@contextlib.contextmanager
def open_atomic(p: PathLike) -> Iterator[BinaryIO]:
    """Opens ``p`` for binary writing so readers see the old file or the whole new one.

    For a file written piece by piece (a safetensors shard streamed tensor by
    tensor). Local: the bytes go to a hidden temporary name beside ``p``, are
    fsynced and renamed over ``p`` when the block ends. Object store: the
    upload is committed when the block ends; an exception cancels it, so no
    object (or the previous one) stays under ``p``.

    Example::

        with storage.open_atomic("gs://bucket/run/model.safetensors") as f:
            for chunk in chunks:
                f.write(chunk)

    Args:
      p: the file to write; its local parent directories are created.

    Yields:
      A binary file object.
    """
    target = path(p)
    if is_remote(target):
        f = target.open("wb")
        try:
            yield f
        except BaseException:
            # Closing the file, here or when it is garbage collected, would commit
            # what was written so far: mark it closed, then cancel the upload
            # session a file larger than one block has already opened.
            f.closed = True
            with contextlib.suppress(Exception):
                f.discard()
            raise
        f.close()
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.partial"
    try:
        with open(partial, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, target)
    finally:
        if partial.exists():
            partial.unlink()


def write_bytes(p: PathLike, data: bytes) -> None:
    """Writes ``data`` to ``p`` so readers never see a partial file (``open_atomic``)."""
    with open_atomic(p) as f:
        f.write(data)


def write_text(p: PathLike, text: str) -> None:
    """``write_bytes`` for UTF-8 text."""
    write_bytes(p, text.encode())


def makedirs(p: PathLike) -> epath.Path:
    """Creates directory ``p`` (a no-op prefix on object stores); returns it."""
    directory = path(p)
    directory.mkdir(parents=True, exist_ok=True)
    return directory
