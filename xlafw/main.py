"""xlafw's command line: ``python -m xlafw.main --fdl_config=llama_tiny [overrides]``.

Flags (Fiddle's own, plus xlafw's):
  --fdl_config=NAME           experiment function in experiments/ (``experiments.`` optional)
  --fdl_config_file=PATH      a saved config.json instead (from a run directory)
  --fiddler=NAME              apply a named edit from experiments/fiddlers.py (repeatable)
  --fdl_set=PATH=VALUE        set one field (repeatable); also spelled --fdl.PATH=VALUE
  --list                      list experiments and fiddlers, then exit
  --print_config              print the flattened config, then exit

The config is resolved, overridden and validated before torch_xla is
imported; any user error prints one list of problems and exits with status 2.
"""

from __future__ import annotations

import sys

from absl import app, flags
from fiddle import absl_flags as fdl_flags  # registers --fdl_config, --fdl_set, ...
from fiddle import printing

from xlafw.config import ConfigError, build_config, registry, validate

FLAGS = flags.FLAGS
_LIST = flags.DEFINE_bool("list", False, "List experiments and fiddlers with descriptions.")
_PRINT = flags.DEFINE_bool("print_config", False, "Print the flattened config and exit.")


def _list() -> None:
    for kind, name, doc in registry.describe_all():
        print(f"{kind:<10} {name:<20} {doc}")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected positional arguments: {argv[1:]}")
    if _LIST.value:
        _list()
        return 0
    try:
        cfg = build_config(
            FLAGS.fdl_config, FLAGS.fdl_config_file, FLAGS.fiddler or (), FLAGS.fdl_set or ()
        )
        if _PRINT.value:
            print(printing.as_str_flattened(cfg))
            return 0
        validate(cfg)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    from xlafw import trainer  # imports torch_xla: only after the config is known good

    trainer.train(cfg, sys.argv)
    return 0


def run() -> None:
    app.run(main, flags_parser=fdl_flags.flags_parser)


if __name__ == "__main__":
    run()
