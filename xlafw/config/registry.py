"""Finding experiments and fiddlers by name, with suggestions for typos.

Names resolve only inside the ``experiments`` package (its ``EXPERIMENTS`` and
``FIDDLERS`` tuples), never by importing arbitrary modules from a flag value.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import fiddle as fdl

from xlafw.config.errors import ConfigError, suggest

PACKAGE = "experiments"


def _registry() -> tuple[dict[str, Callable], dict[str, Callable]]:
    import experiments

    return (
        {f.__name__: f for f in experiments.EXPERIMENTS},
        {f.__name__: f for f in experiments.FIDDLERS},
    )


def _lookup(name: str, table: dict[str, Callable], kind: str, flag: str) -> Callable:
    bare = name.removeprefix(PACKAGE + ".")
    if bare in table:
        return table[bare]
    raise ConfigError(
        f"{flag}={name}: no {kind} named {bare!r} in {PACKAGE}/."
        + suggest(bare, table)
        + f" Known {kind}s: {', '.join(sorted(table))}. Run `python -m xlafw.main --list`"
        f" to see them with descriptions."
    )


def experiment_config(name: str) -> fdl.Config:
    """Calls the experiment function ``name`` and returns its config.

    Raises:
      ConfigError: when no such experiment exists (with suggestions).
    """
    experiments, _ = _registry()
    fn = _lookup(name, experiments, "experiment", "--fdl_config")
    cfg = fn()
    cfg.name = fn.__name__
    return cfg


def fiddler(name: str) -> Callable[[fdl.Config], fdl.Config | None]:
    """Returns the fiddler ``name``.

    Raises:
      ConfigError: when no such fiddler exists (with suggestions).
    """
    _, fiddlers = _registry()
    return _lookup(name, fiddlers, "fiddler", "--fiddler")


def describe_all() -> list[tuple[str, str, str]]:
    """Returns ``(kind, name, first docstring line)`` for every experiment and fiddler."""
    experiments, fiddlers = _registry()
    rows = []
    for kind, table in (("experiment", experiments), ("fiddler", fiddlers)):
        for name, fn in table.items():
            doc = inspect.getdoc(fn) or ""
            rows.append((kind, name, doc.splitlines()[0] if doc else ""))
    return rows
