"""Golden configs: every registered experiment's flattened config, checked in.

``tests/golden/<experiment>.txt`` holds ``fiddle.printing.as_str_flattened`` of
the experiment as ``--fdl_config=<experiment>`` resolves it (no overrides),
with unset defaults. A change to any experiment, or to a default of a class it
configures, shows up as a reviewable diff of these files; ``tests/test_golden.py``
fails until they are regenerated:

    make golden                                # = python -m xlafw.config.golden --write
    python -m xlafw.config.golden              # check only; exit 1 and a diff if stale
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from fiddle import printing

from xlafw.config import registry

GOLDEN_DIR = Path(__file__).resolve().parents[2] / "tests" / "golden"
REGENERATE = "make golden  (python -m xlafw.config.golden --write)"


def experiment_names() -> list[str]:
    """Every registered experiment, in registry order."""
    return [name for kind, name, _ in registry.describe_all() if kind == "experiment"]


def golden_text(name: str) -> str:
    """The flattened config of experiment ``name``, as its golden file holds it."""
    return printing.as_str_flattened(registry.experiment_config(name)) + "\n"


def golden_path(name: str, golden_dir: Path = GOLDEN_DIR) -> Path:
    """Where experiment ``name``'s golden file lives."""
    return golden_dir / f"{name}.txt"


def stale_diff(name: str, golden_dir: Path = GOLDEN_DIR) -> str | None:
    """A unified diff from the checked-in golden file to the current config, or None.

    A missing golden file diffs against an empty one.
    """
    path = golden_path(name, golden_dir)
    expected = path.read_text() if path.exists() else ""
    actual = golden_text(name)
    if expected == actual:
        return None
    return "".join(
        difflib.unified_diff(
            expected.splitlines(keepends=True),
            actual.splitlines(keepends=True),
            fromfile=f"{path} (checked in)",
            tofile=f"{name} (current experiment)",
        )
    )


def write_all(golden_dir: Path = GOLDEN_DIR) -> list[Path]:
    """Regenerates every experiment's golden file; removes files of removed experiments.

    Returns:
      The files written.
    """
    golden_dir.mkdir(parents=True, exist_ok=True)
    names = experiment_names()
    for stale in golden_dir.glob("*.txt"):
        if stale.stem not in names:
            stale.unlink()
    written = []
    for name in names:
        path = golden_path(name, golden_dir)
        path.write_text(golden_text(name))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """``--write`` regenerates the golden files; without it, checks them (exit 1 if stale)."""
    parser = argparse.ArgumentParser(prog="python -m xlafw.config.golden", description=__doc__)
    parser.add_argument("--write", action="store_true", help="regenerate tests/golden/")
    args = parser.parse_args(argv)
    if args.write:
        for path in write_all():
            print(f"wrote {path}")
        return 0
    diffs = [d for d in map(stale_diff, experiment_names()) if d]
    for diff in diffs:
        print(diff)
    if diffs:
        print(f"{len(diffs)} golden config(s) out of date. Review the diff, then run: {REGENERATE}")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
