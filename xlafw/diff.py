"""``python -m xlafw.diff A B``: path-level differences of two configs.

A and B are experiment names (``llama_8b``, ``experiments.llama_70b``), run
directories holding a ``config.json``, or ``config.json`` files. Each is
flattened with ``fiddle.printing.as_dict_flattened`` (explicitly set fields,
plus the class or function each sub-config builds), and every path whose
value differs is printed as ``path: old -> new``; a field set on one side
only shows ``<unset>`` on the other (it takes the callable's default there).

Exit status: 0 when the configs are identical, 1 when they differ, 2 for a
user error (unknown experiment, missing file). Never imports torch_xla.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import fiddle as fdl
from fiddle import printing

from xlafw.config import ConfigError, load_config_file, registry

UNSET = "<unset>"


@dataclasses.dataclass(frozen=True)
class Change:
    """One path whose value differs.

    Attributes:
      path: the dotted path, as in ``model.config.hidden_size``.
      old: the value in A, or ``UNSET``.
      new: the value in B, or ``UNSET``.
    """

    path: str
    old: Any
    new: Any

    def __str__(self) -> str:
        old = self.old if self.old is UNSET else repr(self.old)
        new = self.new if self.new is UNSET else repr(self.new)
        return f"{self.path}: {old} -> {new}"


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


def flatten(cfg: fdl.Buildable) -> dict[str, Any]:
    """``path -> value`` of every set field and of each sub-config's callable name.

    A tuple of tuples (sharding rules) is split into ``path[i]`` entries, so a
    changed rule shows as one line rather than as two whole rule tables.
    """
    flat = {}
    for path, value in printing.as_dict_flattened(cfg, output_fn_or_cls_name=True).items():
        if (
            isinstance(value, (tuple, list))
            and value
            and all(isinstance(v, (tuple, list)) for v in value)
        ):
            flat.update({f"{path}[{i}]": item for i, item in enumerate(value)})
        else:
            flat[path] = value
    return flat


def diff_configs(old: fdl.Buildable, new: fdl.Buildable) -> list[Change]:
    """Every path whose value differs between ``old`` and ``new``, in config order."""
    a, b = flatten(old), flatten(new)
    changes = []
    for path in dict.fromkeys([*a, *b]):  # A's order, then paths only B has
        old_value, new_value = a.get(path, UNSET), b.get(path, UNSET)
        if old_value is UNSET or new_value is UNSET or old_value != new_value:
            changes.append(Change(path, old_value, new_value))
    return changes


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
