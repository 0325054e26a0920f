"""What a run directory records so the run can be reproduced and identified.

``write_run_files`` writes, on process 0, the Fiddle JSON of the config
(reloadable with ``--fdl_config_file``), its flattened text, the exact argv,
package versions with the git revision, and the config hash.

The hash is the SHA-256 of ``fiddle.experimental.serialization.dump_json(cfg)``
(compact, no indentation). Fiddle's JSON is canonical for our purposes: it
omits the argument history, lists a config's arguments in signature order
(not in the order they were written) and names callables by module path, so
the same config hashes the same in every run, on every machine, and after a
round trip through ``config.json``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path

import fiddle as fdl
from fiddle import printing
from fiddle.experimental import serialization

from xlafw import storage

PACKAGES = ("torch", "torch_xla", "fiddle", "jax", "jaxlib", "numpy", "datasets")
REPOSITORY = Path(__file__).resolve().parents[2]


def config_hash(cfg: fdl.Buildable) -> str:
    """The SHA-256 hex digest of the config's Fiddle JSON (module docstring)."""
    return hashlib.sha256(serialization.dump_json(cfg).encode()).hexdigest()


def package_versions() -> dict[str, str | None]:
    """Python's and the key packages' versions, read from installed metadata.

    Metadata, not ``import``: the config path must never import torch_xla
    (ARCHITECTURE.md, "What runs where"), and importing the others only to ask their
    version is slow.
    """
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(repository: Path = REPOSITORY) -> dict[str, str | bool | None]:
    """``{"revision": sha, "dirty": bool}`` of the xlafw checkout; None values without git."""
    try:
        revision = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=repository,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repository,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"revision": None, "dirty": None}
    return {"revision": revision, "dirty": bool(status.strip())}


def write_run_files(cfg: fdl.Buildable, run_dir: str, argv: Sequence[str]) -> str:
    """Writes the files that identify and reproduce a run into ``run_dir``.

    Call it on process 0 only. Files written (``run_dir`` is created; it may be
    a local path or an fsspec URL such as ``gs://bucket/run``):

    - ``config.json``: Fiddle JSON, reloadable with ``--fdl_config_file``.
    - ``config.txt``: the flattened config (``fiddle.printing.as_str_flattened``).
    - ``argv.txt``: the command line, one argument per line.
    - ``versions.json``: python and package versions, git revision and dirty flag.
    - ``config_hash.txt``: ``config_hash(cfg)``.

    Args:
      cfg: the experiment config, overrides applied, not built.
      run_dir: the run directory.
      argv: the process's command line (``sys.argv``).

    Returns:
      The config hash.
    """
    out = storage.makedirs(run_dir)
    digest = config_hash(cfg)
    versions = {**package_versions(), "git": git_state()}
    files = {
        "config.json": serialization.dump_json(cfg, indent=2) + "\n",
        "config.txt": printing.as_str_flattened(cfg) + "\n",
        "argv.txt": "\n".join(argv) + "\n",
        "versions.json": json.dumps(versions, indent=2) + "\n",
        "config_hash.txt": digest + "\n",
    }
    for name, text in files.items():
        storage.write_text(out / name, text)  # never a half-written file, even on a crash
    return digest
