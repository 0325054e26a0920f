"""The commit protocol: which checkpoint steps exist, and whether one is whole.

A checkpoint is a directory ``step_00000012/`` written in place by every host.
It counts only once its commit marker exists. Process 0 writes the marker
last, after every host has passed a barrier, and the marker lists each file
of the checkpoint with its size and CRC32C. So:

- a crash of any host before the marker leaves a directory without one: it
  is not a checkpoint, and the next run deletes it;
- a file damaged or removed after the commit (a truncated upload, a disk
  error, a hand edit) fails verification, and resume falls back to an older
  checkpoint that verifies.

No directory is ever renamed: a rename is atomic on a local disk, but on an
object store it is a copy and a delete of every object, which a crash can
interrupt. Writing in place and committing with one small object works on
both. Nothing in this module imports torch.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re

import google_crc32c
from etils import epath

from xlafw import storage

MARKER = "COMMITTED"
_STEP_DIR = re.compile(r"^step_(\d{8})$")
_READ_CHUNK = 8 << 20


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def parse_step(name: str) -> int | None:
    """The step of a checkpoint directory name, or None for anything else."""
    match = _STEP_DIR.match(name)
    return int(match.group(1)) if match else None


@dataclasses.dataclass(frozen=True)
class FileDigest:
    """What the marker records of one file: its size in bytes and CRC32C."""

    size: int
    crc32c: str


def digest(path: epath.Path) -> FileDigest:
    """Size and CRC32C (base64, as GCS reports it) of one file.

    On GCS the object's stored CRC32C is used, so committing or verifying a
    checkpoint in a bucket reads no shard back; elsewhere the file is read.
    """
    if storage.is_remote(path):
        info = _remote_info(path)
        if info.get("crc32c"):
            return FileDigest(size=int(info["size"]), crc32c=info["crc32c"])
    checksum, size = google_crc32c.Checksum(), 0
    with path.open("rb") as f:
        while chunk := f.read(_READ_CHUNK):
            checksum.update(chunk)
            size += len(chunk)
    return FileDigest(size=size, crc32c=base64.b64encode(checksum.digest()).decode())


def _remote_info(path: epath.Path) -> dict:
    import fsspec

    fs, _, (location,) = fsspec.get_fs_token_paths(str(path))
    return fs.info(location)


def list_files(directory: epath.Path) -> list[str]:
    """Every file under ``directory``, as paths relative to it, sorted."""
    found, pending = [], [(directory, "")]
    while pending:
        folder, prefix = pending.pop()
        for child in folder.iterdir():
            if child.is_dir():
                pending.append((child, f"{prefix}{child.name}/"))
            else:
                found.append(f"{prefix}{child.name}")
    return sorted(found)


def write_marker(
    step_dir: epath.Path, step: int, required: list[str], process_count: int
) -> dict[str, FileDigest]:
    """Commits ``step_dir``: lists and digests its files, then writes the marker.

    Args:
      step_dir: the checkpoint directory every host has finished writing.
      step: its training step (recorded in the marker).
      required: files that must be present (every host's files, DCP's metadata).
      process_count: how many processes wrote it (each host's data position
        belongs to that split of the data).

    Returns:
      The digests written into the marker.

    Raises:
      FileNotFoundError: if a required file is missing (nothing is committed).
    """
    names = [n for n in list_files(step_dir) if n != MARKER]
    missing = sorted(set(required) - set(names))
    if missing:
        raise FileNotFoundError(
            f"{step_dir} is missing {missing} after every host reported its files written"
        )
    files = {name: digest(step_dir / name) for name in names}
    marker = {
        "step": step,
        "process_count": process_count,
        "files": {name: dataclasses.asdict(d) for name, d in files.items()},
    }
    storage.write_text(step_dir / MARKER, json.dumps(marker, indent=1, sort_keys=True))
    return files


def read_marker(step_dir: epath.Path) -> dict:
    """The marker's JSON (``step``, ``process_count``, ``files``)."""
    return json.loads((step_dir / MARKER).read_text())


def committed_steps(directory: epath.Path) -> list[int]:
    """Steps whose directory holds a commit marker, oldest first (unverified)."""
    if not directory.exists():
        return []
    steps = []
    for child in directory.iterdir():
        step = parse_step(child.name)
        if step is not None and (child / MARKER).exists():
            steps.append(step)
    return sorted(steps)


def uncommitted_dirs(directory: epath.Path) -> list[epath.Path]:
    """Checkpoint directories a crash left without a marker (and legacy ``.tmp`` ones)."""
    if not directory.exists():
        return []
    found = []
    for child in directory.iterdir():
        legacy = child.name.startswith(".step_") and child.name.endswith(".tmp")
        if legacy or (parse_step(child.name) is not None and not (child / MARKER).exists()):
            found.append(child)
    return sorted(found, key=lambda p: p.name)


def verify(step_dir: epath.Path) -> str | None:
    """Checks a committed checkpoint against its marker.

    Returns:
      None when every listed file is present with its recorded size and
      CRC32C; otherwise the first problem found, for the warning.
    """
    try:
        files = read_marker(step_dir)["files"]
        expected = {name: FileDigest(**d) for name, d in files.items()}
    except (ValueError, KeyError, TypeError) as e:
        return f"its {MARKER} marker is unreadable ({type(e).__name__}: {e})"
    for name, want in sorted(expected.items()):
        file = step_dir / name
        if not file.exists():
            return f"{name} is missing"
        got = digest(file)
        if got.size != want.size:
            return f"{name} has {got.size} bytes, the marker records {want.size}"
        if got.crc32c != want.crc32c:
            return f"{name} has CRC32C {got.crc32c}, the marker records {want.crc32c}"
    return None
