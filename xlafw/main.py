"""xlafw's command line: ``python -m xlafw.main --fdl_config=llama_tiny [overrides]``.

Flags (Fiddle's own, plus xlafw's):
  --fdl_config=NAME           experiment function in experiments/ (``experiments.`` optional)
  --fdl_config_file=PATH      a saved config.json instead (from a run directory)
  --fiddler=NAME              apply a named edit from experiments/fiddlers.py (repeatable)
  --allow_package=PKG         let --fdl_config_file and --fiddler=PKG.module.fn name PKG's code
  --fdl_set=PATH=VALUE        set one field (repeatable); also spelled --fdl.PATH=VALUE
  --list                      list experiments and fiddlers, then exit
  --print_config              print the flattened config and its hash, then exit
  --explain=PATH              print every write to one field and where it came from, then exit
  --dry_run                   print parameters, memory per device, FLOPs and sharding, then exit
  --target=v5p-256            check and plan for a TPU slice instead of this machine
  --num_slices=N              with --target: N such slices joined by the data-center network
  --num_devices=N             check and plan for N devices
  --expect_config_hash=HASH   refuse to run unless the config hashes to HASH (set by xlafw.launch)
  --sweep=PATH=[V1,V2]        one trial per value (repeatable: a grid); needs --sweep_dir
  --sweep_dir=DIR             where --sweep writes DIR/trial_NNN/config.json, then exit

The config is resolved, overridden and validated before torch_xla is
imported; any user error prints one list of problems and exits with status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import fiddle as fdl
from absl import app, flags
from fiddle import absl_flags as fdl_flags  # registers --fdl_config, --fdl_set, ...
from fiddle import printing

from xlafw.config import ConfigError, build_config, registry, validate
from xlafw.config.explain import explain
from xlafw.config.hardware import backend, detected_device_count, resolve_devices
from xlafw.config.loading import apply_sets
from xlafw.config.plan import Plan, devices_for_dry_run, format_plan
from xlafw.config.provenance import config_hash
from xlafw.config.sweep import write_sweep
from xlafw.exit_codes import ExitCode

FLAGS = flags.FLAGS
_LIST = flags.DEFINE_bool("list", False, "List experiments and fiddlers with descriptions.")
_PRINT = flags.DEFINE_bool("print_config", False, "Print the flattened config and exit.")
_EXPLAIN = flags.DEFINE_string(
    "explain", None, "Print every write to this field (e.g. optimizer.lr) with its origin; exit."
)
_DRY_RUN = flags.DEFINE_bool(
    "dry_run",
    False,
    "Print parameter counts, memory per device, FLOPs and the sharding table; exit. "
    "Builds the model on the meta device only; never starts XLA.",
)
_TARGET = flags.DEFINE_string(
    "target", None, "Validate and plan for a TPU slice: v4-N, v5e-N (v5litepod-N), v5p-N, v6e-N."
)
_NUM_SLICES = flags.DEFINE_integer(
    "num_slices", 1, "With --target: validate and plan for this many slices of that type."
)
_NUM_DEVICES = flags.DEFINE_integer(
    "num_devices", None, "Validate and plan for this many devices instead of the detected ones."
)
_EXPECT_HASH = flags.DEFINE_string(
    "expect_config_hash",
    None,
    "Exit 2 unless the built config's hash (see --print_config) is this one. "
    "xlafw.launch sets it so that every host of a pod runs the same config.",
)
_SWEEP = flags.DEFINE_multi_string(
    "sweep", [], "PATH=[V1,V2,...]: one trial per value; repeat for a grid. Needs --sweep_dir."
)
_ALLOW_PACKAGE = flags.DEFINE_multi_string(
    "allow_package",
    [],
    "A package (besides xlafw and experiments) whose callables --fdl_config_file and "
    "--fiddler=module.function may name; repeatable. Without it a config file is pure data.",
)
_SWEEP_DIR = flags.DEFINE_string(
    "sweep_dir", None, "Write one config.json per --sweep trial here, print the commands, exit."
)


def _list() -> None:
    for kind, name, doc in registry.describe_all():
        print(f"{kind:<10} {name:<20} {doc}")


def _build() -> fdl.Config:
    return build_config(
        FLAGS.fdl_config,
        FLAGS.fdl_config_file,
        FLAGS.fiddler or (),
        FLAGS.fdl_set or (),
        allowed_packages=tuple(_ALLOW_PACKAGE.value),
    )


def _trial_config(trial_sets: Sequence[str]) -> fdl.Config:
    cfg = _build()
    apply_sets(cfg, trial_sets, flag="--sweep")
    return cfg


def _check_declared_devices_for_training() -> None:
    """A declared target or count only describes this run when it matches the machine."""
    if backend() != "CPU":
        return
    if _TARGET.value:
        raise ConfigError(
            f"--target={_TARGET.value} describes a TPU slice, but PJRT_DEVICE is CPU here. "
            f"Fix: add --dry_run to plan for it, or launch on the TPU slice."
        )
    detected = detected_device_count()
    if _NUM_DEVICES.value is not None and _NUM_DEVICES.value != detected:
        raise ConfigError(
            f"--num_devices={_NUM_DEVICES.value}, but CPU_NUM_DEVICES gives {detected}. Fix: "
            f"set CPU_NUM_DEVICES={_NUM_DEVICES.value}, or add --dry_run to only plan."
        )


def _sweep() -> None:
    if not _SWEEP_DIR.value:
        raise ConfigError("--sweep needs --sweep_dir=DIR for the trials' config files.")
    trials = write_sweep(
        _SWEEP.value,
        _SWEEP_DIR.value,
        make_trial_config=_trial_config,
        validate=lambda cfg: validate(
            cfg, _NUM_DEVICES.value, target=_TARGET.value, num_slices=_NUM_SLICES.value
        ),
    )
    print(f"{len(trials)} trials in {_SWEEP_DIR.value} (nothing was run):")
    for trial in trials:
        print(f"# {trial.name}: {' '.join(trial.overrides)}  config_hash={trial.config_hash[:12]}")
        print(trial.command)


def _dry_run(cfg: fdl.Config) -> None:
    devices = resolve_devices(_NUM_DEVICES.value, _TARGET.value, _NUM_SLICES.value)
    if _NUM_DEVICES.value is None and not _TARGET.value:
        devices = devices_for_dry_run(cfg, devices)
    # A dry run reports the memory estimate instead of refusing to run.
    plan = validate(
        cfg, target=_TARGET.value, num_slices=_NUM_SLICES.value, purpose="plan", devices=devices
    )
    print(format_plan(plan))


def _check_expected_hash(cfg: fdl.Config) -> None:
    """Refuses a config other than the one the launcher wrote (``--expect_config_hash``)."""
    expected = _EXPECT_HASH.value
    if expected is None:
        return
    actual = config_hash(cfg)
    if actual != expected.strip().lower():
        raise ConfigError(
            f"--expect_config_hash={expected}: the config built from these flags hashes to "
            f"{actual}, so this host would run another config than the launch wrote. Fix: "
            f"launch again with python -m xlafw.launch (it writes config.json and passes its "
            f"hash together); do not edit a launched run's config.json."
        )


def _config_to_train() -> tuple[fdl.Config, Plan] | None:
    """Handles every flag that exits early; returns the config and its plan to train.

    Raises:
      ConfigError: for any user error.
    """
    if _SWEEP_DIR.value and not _SWEEP.value:
        raise ConfigError("--sweep_dir is only used with --sweep=PATH=[V1,V2,...].")
    if _SWEEP.value:
        _sweep()
        return None
    cfg = _build()
    _check_expected_hash(cfg)
    if _PRINT.value:
        print(printing.as_str_flattened(cfg))
        print(f"# config_hash: {config_hash(cfg)}")
        return None
    if _EXPLAIN.value:
        print(explain(cfg, _EXPLAIN.value))
        return None
    if _DRY_RUN.value:
        _dry_run(cfg)
        return None
    plan = validate(cfg, _NUM_DEVICES.value, target=_TARGET.value, num_slices=_NUM_SLICES.value)
    _check_declared_devices_for_training()
    return cfg, plan


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected positional arguments: {argv[1:]}")
    if _LIST.value:
        _list()
        return 0
    try:
        to_train = _config_to_train()
    except ConfigError as e:
        print(e, file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    if to_train is None:
        return ExitCode.OK
    cfg, plan = to_train
    from xlafw import trainer  # imports torch_xla: only after the config is known good

    try:
        trainer.train(cfg, sys.argv, plan=plan)
    except trainer.RunRefused as e:  # before the first step: nothing was trained
        print(f"error: {e}", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    except trainer.Preempted as e:
        print(f"stopped: {e}", file=sys.stderr)
        return ExitCode.PREEMPTED
    except trainer.TrainingStopped as e:
        print(f"error: {e}", file=sys.stderr)
        if isinstance(e, trainer.NonFiniteLoss):
            return ExitCode.NON_FINITE_LOSS
        if isinstance(e, trainer.RunFailed):
            return e.exit_code
        return ExitCode.ERROR
    return ExitCode.OK


def run() -> None:
    app.run(main, flags_parser=fdl_flags.flags_parser)


if __name__ == "__main__":
    run()
