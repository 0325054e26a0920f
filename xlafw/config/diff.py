"""Path-level differences of two configs.

Each config is flattened with ``fiddle.printing.as_dict_flattened`` (explicitly
set fields, plus the class or function each sub-config builds); every path
whose value differs is a ``Change``. A field set on one side only is ``UNSET``
on the other (it takes the callable's default there).

Used by the checkpoint manager (a resumed run's config against the one saved
with the checkpoint) and by ``python -m xlafw.diff A B``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import fiddle as fdl
from fiddle import printing

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
