"""From command-line flags to one overridden ``fdl.Config[Experiment]``.

The flags are Fiddle's own (``--fdl_config``, ``--fdl_config_file``,
``--fiddler``, ``--fdl_set`` and its ``--fdl.PATH=VALUE`` spelling), applied in
Fiddle's order: base config, then fiddlers, then sets. xlafw resolves names in
its registry and type-checks every set.
"""

from __future__ import annotations

from collections.abc import Sequence

import fiddle as fdl
from fiddle.experimental import serialization

from xlafw.config import registry
from xlafw.config.errors import ConfigError
from xlafw.config.overrides import apply_override


def load_config_file(path: str) -> fdl.Config:
    """Loads a config saved as Fiddle JSON (a run's ``config.json``)."""
    from etils import epath

    file = epath.Path(path)
    if not file.exists():
        raise ConfigError(
            f"--fdl_config_file={path}: no such file. Fix: pass the config.json a run "
            f"wrote into its run directory."
        )
    try:
        return serialization.load_json(file.read_text())
    except Exception as e:
        raise ConfigError(f"--fdl_config_file={path}: not a Fiddle JSON config ({e}).") from None


def build_config(
    config_name: str | None,
    config_file: str | None = None,
    fiddlers: Sequence[str] = (),
    sets: Sequence[str] = (),
) -> fdl.Config:
    """Resolves the experiment and applies fiddlers, then ``path=value`` sets.

    Every bad set is reported, not just the first.

    Raises:
      ConfigError: for an unknown experiment or fiddler, or bad overrides.
    """
    if bool(config_name) == bool(config_file):
        raise ConfigError(
            "pass exactly one of --fdl_config=NAME (an experiment, see --list) or "
            "--fdl_config_file=PATH (a saved config.json)."
        )
    cfg = registry.experiment_config(config_name) if config_name else load_config_file(config_file)
    for name in fiddlers:
        result = registry.fiddler(name)(cfg)
        if result is not None:
            cfg = result
    problems = []
    for item in sets:
        path, sep, raw = item.partition("=")
        if not sep:
            problems.append(f"--fdl_set={item}: expected PATH=VALUE, as in trainer.max_steps=30")
            continue
        try:
            apply_override(cfg, path.strip(), raw)
        except ConfigError as e:
            problems.extend(e.problems)
    if problems:
        raise ConfigError(problems)
    return cfg
