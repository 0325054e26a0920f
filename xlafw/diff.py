"""``python -m xlafw.diff A B``: path-level differences of two configs.

A and B are experiment names (``llama_8b``, ``experiments.llama_70b``), run
directories holding a ``config.json``, or ``config.json`` files. Every path
whose value differs is printed as ``path: old -> new``; a field set on one
side only shows ``<unset>`` on the other (it takes the callable's default
there). The comparison is ``xlafw.config.diff``; this module only loads the
two configs and prints.

Exit status: 0 when the configs are identical, 1 when they differ, 2 for a
user error (unknown experiment, missing file). Never imports torch_xla.
"""

from __future__ import annotations

import sys
from pathlib import Path

import fiddle as fdl

from xlafw.config import ConfigError, load_config_file, registry
from xlafw.config.diff import diff_configs


def load(spec: str) -> fdl.Config:
    """The config named by ``spec``: a run directory, a config.json, or an experiment.

    Raises:
      ConfigError: when ``spec`` is none of them (with suggestions).
    """
    path = Path(spec)
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.exists():
            raise ConfigError(
                f"{spec} is a directory without a config.json. Fix: pass a run directory "
                f"(it has config.json) or an experiment name."
            )
        return load_config_file(str(config_file))
    if path.suffix == ".json":
        return load_config_file(spec)
    return registry.experiment_config(spec)


def main(argv: list[str]) -> int:
    """Prints the differences between two configs; returns the exit status.

    Args:
      argv: ``[A, B]``, the two configs (experiment, run directory or config.json).

    Returns:
      0 if identical, 1 if they differ, 2 for a usage or config error.
    """
    if len(argv) != 2 or any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: python -m xlafw.diff A B", file=sys.stderr)
        return 2
    try:
        old, new = load(argv[0]), load(argv[1])
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    changes = diff_configs(old, new)
    print(f"--- {argv[0]}\n+++ {argv[1]}")
    for change in changes:
        print(change)
    print(f"{len(changes)} difference(s)" if changes else "identical")
    return 1 if changes else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
