"""Finding experiments and fiddlers by name, with suggestions for typos.

Names resolve only inside one package, ``PACKAGE`` (its ``EXPERIMENTS`` and
``FIDDLERS`` tuples), never by importing arbitrary modules from a flag value.

The library does not depend on any experiments package: ``PACKAGE`` is a name,
``"experiments"`` (this repository's) unless the program sets another before
the first lookup (``registry.PACKAGE = "my_experiments"``), and it is imported
with ``importlib`` only when a name is resolved. Importing ``xlafw`` imports no
experiment; the command line is what decides where experiments come from.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

import fiddle as fdl

from xlafw.config.errors import ConfigError, suggest

# The package experiments and fiddlers are resolved in (module docstring).
PACKAGE = "experiments"


def _registry() -> tuple[dict[str, Callable], dict[str, Callable]]:
    try:
        package = importlib.import_module(PACKAGE)
    except ModuleNotFoundError as e:
        if e.name != PACKAGE:
            raise  # the package itself failed to import something: its own error
        raise ConfigError(
            f"no package {PACKAGE!r} to find experiments in. Fix: run from the directory that "
            f"holds {PACKAGE}/ (the repository root), or install it."
        ) from None
    return (
        {f.__name__: f for f in package.EXPERIMENTS},
        {f.__name__: f for f in package.FIDDLERS},
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


def fiddler(
    name: str, allowed_packages: tuple[str, ...] = ()
) -> Callable[[fdl.Config], fdl.Config | None]:
    """Returns the fiddler ``name``: one of the registry's, or ``module.function``
    in a package the user opted into (``--allow_package``).

    Raises:
      ConfigError: when no such fiddler exists (with suggestions), or when a
        dotted name is outside the allowed packages.
    """
    module, _, function = name.rpartition(".")
    top = module.split(".")[0]
    if module and module != PACKAGE and top in allowed_packages:
        import importlib

        try:
            fn = getattr(importlib.import_module(module), function)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"--fiddler={name}: cannot import it ({e}).") from None
        if not callable(fn):
            raise ConfigError(f"--fiddler={name}: {type(fn).__name__} is not callable.")
        return fn
    if module and module != PACKAGE:
        raise ConfigError(
            f"--fiddler={name}: fiddlers resolve in {PACKAGE}/ (its FIDDLERS) only, so a flag "
            f"cannot import and call arbitrary code. Fix: add it to {PACKAGE}.FIDDLERS, or opt "
            f"its package in with --allow_package={top}."
        )
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
