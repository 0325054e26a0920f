"""From command-line flags to one overridden ``fdl.Config[Experiment]``.

The flags are Fiddle's own (``--fdl_config``, ``--fdl_config_file``,
``--fiddler``, ``--fdl_set`` and its ``--fdl.PATH=VALUE`` spelling), applied in
Fiddle's order: base config, then fiddlers, then sets. xlafw resolves names in
its registry and type-checks every set.

Every write is recorded in Fiddle's argument history with where it came from,
so ``--explain=PATH`` can say it: the experiment's file and line (Fiddle's own
stack-trace location), ``--fiddler=NAME`` at the fiddler's line, or the exact
``--fdl_set=PATH=VALUE`` (``--fdl.PATH=VALUE`` arrives rewritten to that).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import fiddle as fdl
from fiddle import history
from fiddle.experimental import serialization

from xlafw.config import registry
from xlafw.config.errors import ConfigError
from xlafw.config.overrides import apply_override

# The "file name" of history locations written by command-line flags; the flag
# itself goes in the function-name slot, so Fiddle's own history printing shows
# "<command line>:0:--fdl_set=optimizer.lr=1e-3".
COMMAND_LINE = "<command line>"


def flag_location(flag: str) -> history.Location:
    """The history location of a write made by the command-line flag ``flag``."""
    return history.Location(filename=COMMAND_LINE, line_number=0, function_name=flag)


def _fiddler_location(name: str, fn: Callable) -> history.LocationProvider:
    """Locates writes at the fiddler's own line, labelled ``--fiddler=NAME``."""
    code = getattr(fn, "__code__", None)
    filename = inspect.getsourcefile(fn) or "<unknown>"

    def provider() -> history.Location:
        frame = inspect.currentframe()
        while frame is not None and frame.f_code is not code:
            frame = frame.f_back
        line = frame.f_lineno if frame is not None else 0
        return history.Location(
            filename=filename, line_number=line, function_name=f"--fiddler={name}"
        )

    return provider


def apply_sets(cfg: fdl.Config, sets: Sequence[str], flag: str = "--fdl_set") -> None:
    """Applies ``PATH=VALUE`` overrides, recording ``flag=PATH=VALUE`` as each one's location.

    Raises:
      ConfigError: listing every bad override, not just the first.
    """
    problems = []
    for item in sets:
        path, sep, raw = item.partition("=")
        if not sep:
            problems.append(f"{flag}={item}: expected PATH=VALUE, as in trainer.max_steps=30")
            continue
        location = flag_location(f"{flag}={item}")
        try:
            with history.custom_location(lambda location=location: location):
                apply_override(cfg, path.strip(), raw)
        except ConfigError as e:
            problems.extend(e.problems)
    if problems:
        raise ConfigError(problems)


class ConfigFilePolicy(serialization.PyrefPolicy):
    """What a config file may name: xlafw's and experiments' objects, Fiddle's, a few builtins.

    A config file is data. Fiddle's JSON names the callables to rebuild and
    imports them; without a policy a file (a run's ``config.json``, one saved
    with a checkpoint, one passed with ``--fdl_config_file``) could name
    ``os.system`` or import any installed module. The experiments package is
    the registry's (``registry.PACKAGE``).
    """

    PACKAGES = ("xlafw", "fiddle")
    BUILTINS = frozenset({"tuple", "list", "dict", "set", "frozenset", "int", "float", "str"})

    def __init__(self, allowed_packages: Sequence[str] = ()):
        """``allowed_packages``: more packages the user opted into (``--allow_package``)."""
        self.allowed_packages = tuple(allowed_packages)
        self.refused: str | None = None  # the last name refused, for the error message

    def allows_import(self, module: str, symbol: str) -> bool:
        if module == "builtins":
            allowed = symbol in self.BUILTINS
        else:
            packages = (*self.PACKAGES, registry.PACKAGE, *self.allowed_packages)
            allowed = any(module == p or module.startswith(p + ".") for p in packages)
        if not allowed:
            self.refused = f"{module}.{symbol}"
        return allowed

    def __repr__(self) -> str:
        return f"ConfigFilePolicy(allowed_packages={self.allowed_packages})"

    def allows_value(self, value: object) -> bool:
        return True  # the import itself is what the policy restricts


class ConfigFileRefused(ValueError):
    """A config file names a callable outside the allowed packages."""


def load_config_json(text: str, allowed_packages: Sequence[str] = ()) -> fdl.Config:
    """Parses Fiddle JSON, importing only what ``ConfigFilePolicy`` allows.

    Raises:
      ConfigFileRefused: naming the first thing the JSON may not import.
    """
    policy = ConfigFilePolicy(allowed_packages)
    try:
        return serialization.load_json(text, pyref_policy=policy)
    except serialization.PyrefPolicyError:
        raise ConfigFileRefused(
            f"it names {policy.refused}, which a config file may not import"
        ) from None


def load_config_file(path: str, allowed_packages: Sequence[str] = ()) -> fdl.Config:
    """Loads a config saved as Fiddle JSON (a run's ``config.json``)."""
    from etils import epath

    file = epath.Path(path)
    if not file.exists():
        raise ConfigError(
            f"--fdl_config_file={path}: no such file. Fix: pass the config.json a run "
            f"wrote into its run directory."
        )
    try:
        return load_config_json(file.read_text(), allowed_packages)
    except ConfigFileRefused as e:
        raise ConfigError(
            f"--fdl_config_file={path}: {e}. A config file is data: it may only name objects "
            f"of xlafw, {registry.PACKAGE}, Fiddle and packages opted in with --allow_package. "
            f"Fix: use a config.json xlafw wrote, or --allow_package=PACKAGE for your own code."
        ) from None
    except Exception as e:
        raise ConfigError(f"--fdl_config_file={path}: not a Fiddle JSON config ({e}).") from None


def build_config(
    config_name: str | None,
    config_file: str | None = None,
    fiddlers: Sequence[str] = (),
    sets: Sequence[str] = (),
    allowed_packages: Sequence[str] = (),
) -> fdl.Config:
    """Resolves the experiment and applies fiddlers, then ``path=value`` sets.

    Every bad set is reported, not just the first. ``allowed_packages`` are the
    packages besides xlafw and the experiments package whose callables a config
    file or a ``--fiddler=module.function`` may name (``--allow_package``).

    Raises:
      ConfigError: for an unknown experiment or fiddler, or bad overrides.
    """
    if bool(config_name) == bool(config_file):
        raise ConfigError(
            "pass exactly one of --fdl_config=NAME (an experiment, see --list) or "
            "--fdl_config_file=PATH (a saved config.json)."
        )
    allowed = tuple(allowed_packages)
    cfg = (
        registry.experiment_config(config_name)
        if config_name
        else load_config_file(config_file, allowed)
    )
    for name in fiddlers:
        fn = registry.fiddler(name, allowed)
        with history.custom_location(_fiddler_location(name, fn)):
            result = fn(cfg)
        if result is not None:
            cfg = result
    apply_sets(cfg, sets)
    return cfg
