"""``--explain=PATH``: every write to one config field and where it came from.

Reads Fiddle's argument history (``Buildable.__argument_history__``), which
records each write with a location: the experiment's file and line, a
fiddler (``--fiddler=NAME`` at its line) or a command-line flag
(``--fdl_set=PATH=VALUE``); see ``loading.py`` for how the last two are
labelled.
"""

from __future__ import annotations

import os
import re
from typing import Any

import fiddle as fdl
from fiddle import history

from xlafw.config.errors import ConfigError, suggest
from xlafw.config.loading import COMMAND_LINE
from xlafw.config.overrides import owner_name, parameters

_DOTTED_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def format_location(location: history.Location) -> str:
    """``experiments/llama.py:73 in llama_tiny``, ``--fiddler=quick at ...``, or the flag."""
    if location.filename == COMMAND_LINE:
        return f"command line: {location.function_name}"
    filename = location.filename
    try:
        relative = os.path.relpath(filename)
        filename = relative if not relative.startswith("..") else filename
    except ValueError:  # another drive on Windows
        pass
    where = f"{filename}:{location.line_number}"
    name = location.function_name or ""
    if name.startswith("--"):
        return f"{name} at {where}"
    return f"{where} in {name}" if name else where


def _owner_and_field(cfg: fdl.Buildable, path: str) -> tuple[fdl.Buildable, str]:
    if not _DOTTED_PATH.match(path):
        raise ConfigError(
            f"--explain={path}: history is kept per config field; name a field with dots "
            f"only, as in optimizer.lr."
        )
    node: Any = cfg
    walked = ""
    *parents, field = path.split(".")
    for name in parents:
        here = f"{walked}.{name}" if walked else name
        value = getattr(node, name, None) if isinstance(node, fdl.Buildable) else None
        if not isinstance(value, fdl.Buildable):
            hint = suggest(name, parameters(node)[0], f"{walked}." if walked else "")
            raise ConfigError(f"--explain={path}: {here} is not a sub-config.{hint}")
        node, walked = value, here
    params, takes_kwargs = parameters(node)
    if field not in params and not takes_kwargs:
        prefix = f"{walked}." if walked else ""
        raise ConfigError(
            f"--explain={path}: {owner_name(node)} (at {walked or 'the top level'}) has no "
            f"field {field!r}.{suggest(field, params, prefix)}"
        )
    return node, field


def explain(cfg: fdl.Buildable, path: str) -> str:
    """Describes every write to ``path`` in ``cfg``, oldest first.

    Args:
      cfg: the config, as built from the command line (a config reloaded from
        JSON has no history before the reload).
      path: a dotted field path, as in ``optimizer.lr``.

    Returns:
      Lines naming the current value, then each write's value and location.

    Raises:
      ConfigError: when the path names no field (with suggestions).

    Example::

        optimizer.lr = 0.001 (AdamW.lr)
          1. 0.0003  experiments/llama.py:43 in _experiment
          2. 0.003   experiments/llama.py:73 in llama_tiny
          3. 0.001   command line: --fdl_set=optimizer.lr=1e-3
    """
    owner, field = _owner_and_field(cfg, path)
    entries = owner.__argument_history__.get(field, [])
    if field in owner.__arguments__:
        current = repr(owner.__arguments__[field])
    else:
        default = parameters(owner)[0].get(field)
        shown = (
            "no default"
            if default is None or default.default is default.empty
            else (f"default {default.default!r}")
        )
        current = f"<unset: {shown}>"
    lines = [f"{path} = {current} ({owner_name(owner)}.{field})"]
    if not entries:
        lines.append("  never written: the value is the callable's default.")
    # Align short values; a long one (a rules tuple) just pushes its location right.
    width = min(24, max((len(repr(e.new_value)) for e in entries), default=0))
    for i, entry in enumerate(entries, 1):
        value = "<deleted>" if entry.new_value is history.DELETED else repr(entry.new_value)
        lines.append(f"  {i}. {value:<{width}}  {format_location(entry.location)}")
    return "\n".join(lines)
