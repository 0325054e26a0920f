"""Sweeps: a grid of overrides written as one runnable, hashed config per trial.

``--sweep=optimizer.lr=[1e-4,3e-4] --sweep=data.seq_len=[128,256]`` yields the
cartesian product (4 trials, the first flag varying slowest). Each trial is
the experiment with the usual ``--fiddler``/``--fdl_set`` overrides, then its
own values (type-checked like any ``--fdl_set``), validated, and written to
``DIR/trial_NNN/config.json`` with ``trial.json`` (overrides and hash).
The trial directory is also the trial's run directory (``trainer.run_dir``),
so trials never overwrite each other's metrics. xlafw runs nothing itself:
it prints one command per trial for whatever scheduler you use.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import fiddle as fdl
from fiddle.experimental import serialization

from xlafw.config.errors import ConfigError
from xlafw.config.provenance import config_hash
from xlafw.config.validation import directory_problem

_CLOSING = {"[": "]", "(": ")", "{": "}"}


@dataclasses.dataclass(frozen=True)
class Trial:
    """One point of the grid.

    Attributes:
      name: ``trial_NNN``; also its directory under the sweep directory.
      overrides: the ``PATH=VALUE`` sets that make this trial.
      config_file: where its config.json was written.
      config_hash: ``provenance.config_hash`` of its config.
    """

    name: str
    overrides: tuple[str, ...]
    config_file: str
    config_hash: str

    @property
    def command(self) -> str:
        return f"python -m xlafw.main --fdl_config_file={self.config_file}"


def split_values(raw: str) -> list[str]:
    """``[1e-4, (1,2), 'a,b']`` -> ``['1e-4', '(1,2)', "'a,b'"]``: top-level commas only."""
    text = raw.strip()
    if not (text.startswith("[") and text.endswith("]")) or len(text) < 3:
        raise ValueError("expected a bracketed list of values, as in [1e-4,3e-4]")
    values, depth, quote, start = [], [], None, 1
    for i, ch in enumerate(text[1:-1], 1):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in _CLOSING:
            depth.append(_CLOSING[ch])
        elif depth and ch == depth[-1]:
            depth.pop()
        elif ch == "," and not depth:
            values.append(text[start:i].strip())
            start = i + 1
    values.append(text[start:-1].strip())
    if any(not v for v in values):
        raise ValueError("empty value in the list")
    return values


def parse_sweep(flag_value: str) -> tuple[str, list[str]]:
    """``optimizer.lr=[1e-4,3e-4]`` -> ``("optimizer.lr", ["1e-4", "3e-4"])``.

    Raises:
      ConfigError: naming the flag and the expected form.
    """
    path, sep, raw = flag_value.partition("=")
    try:
        if not sep or not path.strip():
            raise ValueError("expected PATH=[V1,V2,...]")
        return path.strip(), split_values(raw)
    except ValueError as e:
        raise ConfigError(
            f"--sweep={flag_value}: {e}. Fix: write it as --sweep=optimizer.lr=[1e-4,3e-4]."
        ) from None


def grid(sweeps: Sequence[str]) -> list[tuple[str, ...]]:
    """The cartesian product of the ``--sweep`` flags, as ``PATH=VALUE`` tuples."""
    axes = [parse_sweep(s) for s in sweeps]
    paths = [path for path, _ in axes]
    return [
        tuple(f"{p}={v}" for p, v in zip(paths, values, strict=True))
        for values in itertools.product(*(vals for _, vals in axes))
    ]


def write_sweep(
    sweeps: Sequence[str],
    sweep_dir: str,
    make_trial_config: Callable[[Sequence[str]], fdl.Config],
    validate: Callable[[fdl.Config], None],
) -> list[Trial]:
    """Builds, validates and writes one config per grid point.

    Args:
      sweeps: the ``--sweep`` flag values.
      sweep_dir: where ``trial_NNN/`` directories and ``sweep.json`` go.
      make_trial_config: builds the experiment with extra ``PATH=VALUE`` sets
        applied after the command line's own.
      validate: raises ``ConfigError`` for a trial that would not run.

    Returns:
      The trials, in grid order.

    Raises:
      ConfigError: listing every trial's problems (nothing is written then).
    """
    points = grid(sweeps)
    if problem := directory_problem("--sweep_dir", sweep_dir, "the trials' configs"):
        raise ConfigError(problem)
    configs, problems = [], []
    for index, overrides in enumerate(points):
        name = f"trial_{index:03d}"
        run_dir = str(Path(sweep_dir) / name)
        try:
            cfg = make_trial_config((f"trainer.run_dir={run_dir}", *overrides))
            validate(cfg)
        except ConfigError as e:
            problems += [f"{name} ({' '.join(overrides)}): {p}" for p in e.problems]
            continue
        configs.append((name, overrides, cfg))
    if problems:
        raise ConfigError(problems)
    trials = []
    for name, overrides, cfg in configs:
        trial_dir = Path(sweep_dir) / name
        trial_dir.mkdir(parents=True, exist_ok=True)
        config_file = trial_dir / "config.json"
        config_file.write_text(serialization.dump_json(cfg, indent=2) + "\n")
        trial = Trial(name, overrides, str(config_file), config_hash(cfg))
        (trial_dir / "trial.json").write_text(json.dumps(_record(trial), indent=2) + "\n")
        trials.append(trial)
    index_file = Path(sweep_dir) / "sweep.json"
    index_file.write_text(
        json.dumps({"sweeps": list(sweeps), "trials": [_record(t) for t in trials]}, indent=2)
        + "\n"
    )
    return trials


def _record(trial: Trial) -> dict:
    return {**dataclasses.asdict(trial), "command": trial.command}
