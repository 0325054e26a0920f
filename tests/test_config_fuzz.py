"""The config fuzzer: hostile values for every field of every experiment, as a user types them.

For every experiment in ``experiments.EXPERIMENTS`` and every leaf field reachable
from its config (every argument of every Buildable, set or default, that is not
itself a sub-config), hostile values go through the command line's own path:
``build_config(name, sets=["PATH=VALUE"])`` (``--fdl_set``'s parsing and type
checks), then ``validate`` in a context where the experiment itself is valid
(this machine, 8 virtual devices, or a v5p slice; the plan of ``--dry_run`` for
experiments that only fit a larger one). Each case must end one of two ways:

- rejected: a ``ConfigError`` whose message names the field's path;
- accepted: and then the experiment builds as the trainer builds it
  (``fdl.build``, the schedule for ``trainer.max_steps``, the optimizer over a
  stand-in parameter and one step of it, the data and eval pipelines for one
  host; the model is already built on the meta device by ``validate``).

Anything else (another exception, a rejection that does not name the field, an
accepted config that fails to build) is an escape. Escapes are collected and
reported together with their field and value. Every field also gets values set
directly, as a config file could hold them: one of the wrong type, and NaN for
floats (the command line has no NaN literal).

A few command-line cases run as processes: device, target, sweep and explain
flags of ``xlafw.main`` and the flags of ``xlafw.launch``; each must exit 2
naming the flag, with no traceback. Nothing starts XLA.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import math
import os
import re
import subprocess
import sys
import time
import types
import typing
from typing import Any

import fiddle as fdl
import pytest
import torch
from conftest import ROOT
from fiddle import absl_flags as fdl_flags
from fiddle import daglish

import experiments
from xlafw.config import ConfigError, build_config, validate
from xlafw.config.loading import apply_sets
from xlafw.config.overrides import annotations, parameters
from xlafw.data.pipeline import HostShard

# Where an experiment is checked, first that accepts it unchanged: this machine,
# 8 virtual CPU devices, a v5p slice, or (models larger than any one slice's
# memory, like llama_405b) the plan --dry_run prints for it.
CONTEXTS = (
    {},
    {"num_devices": 8},
    {"target": "v5p-256"},
    {"target": "v5p-256", "purpose": "plan"},
)
# The issue asks for under 2 minutes; its time is measured (printed here, and in pytest's
# durations; ~45 s on an idle 2-core machine), not asserted: a loaded machine is slower.
# Escapes not fixed yet, as (field, value typed or set): each must still escape (the
# test says when one is fixed, so that it leaves this list), and no other may.
KNOWN_ESCAPES: set[tuple[str, str]] = set()


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One settable field: its path, annotation and current (or default) value."""

    path: str
    annotation: Any
    value: Any


def leaves(cfg: fdl.Buildable) -> list[Leaf]:
    """Every argument of every Buildable in ``cfg`` that is not itself a sub-config."""
    found = []
    for node, path in daglish.iterate(cfg):
        if not isinstance(node, fdl.Buildable):
            continue
        where = daglish.path_str(path).lstrip(".")
        params, _ = parameters(node)
        hints = annotations(node)
        for name, param in params.items():
            value = getattr(node, name, param.default)
            if isinstance(value, fdl.Buildable):
                continue
            found.append(Leaf(f"{where}.{name}" if where else name, hints.get(name, Any), value))
    return found


@dataclasses.dataclass(frozen=True)
class Paths:
    """Existing and missing paths on this machine, for string fields."""

    file: str
    directory: str
    missing: str


def _options(tp: Any) -> list[Any]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(tp) if a is not type(None)]
    return [tp]


def hostile_values(leaf: Leaf, paths: Paths) -> list[str]:
    """What a careless or malicious user might type for ``leaf``, as command-line text."""
    values = ["None", "'   '"]
    for tp in _options(leaf.annotation):
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if tp is bool:
            values += ["maybe", "2"]
        elif tp is int:
            values += ["-1", "0", "99999999999999999999", "1.5"]
        elif tp is float:
            values += ["-1.0", "0", "1e308", "1e400", "-1e400", "nan"]
        elif tp is str:
            values += ["''", "' x'", "{", "{nope}", paths.file, paths.directory, paths.missing]
        elif origin is typing.Literal or (isinstance(tp, type) and issubclass(tp, enum.Enum)):
            values += ["bogus", "''"]
        elif origin is tuple and args and args[-1] is Ellipsis:
            item = args[0]
            values += ["()", "(1,)", "('',)"]
            if item is str:
                values += [
                    f"('{paths.missing}',)",
                    f"('{paths.directory}',)",
                    f"('{paths.file}',)",
                    "('x', 'x')",
                ]
            else:
                values += ["(('x',),)", "(('*', ('nope',)),)", "(('*', ('fsdp', 'fsdp')),)"]
        elif origin is tuple:
            n = len(args)
            values += ["()", f"{(1,) * (n - 1)}", f"{(1,) * (n + 1)}"]
            if args and args[0] is int:
                values += ["(5, 1)", "(0, 3)", "(1, 99999999)"]
            if args and args[0] is float:
                values += ["(0.99, 0.9)", "(1.0, 0.9)", "(-0.1, 0.9)", "(0.9, 1e400)"]
        else:
            values += ["1", "'x'", "()"]
    return list(dict.fromkeys(values))


def file_values(leaf: Leaf) -> list[Any]:
    """Values a config file could hold that the command line cannot type: NaN, a wrong type."""
    values: list[Any] = [1 if isinstance(leaf.value, str) else "1"]
    if float in _options(leaf.annotation):
        values.append(math.nan)
    return values


def context_for(name: str) -> dict[str, Any]:
    """The first of ``CONTEXTS`` in which experiment ``name`` validates unchanged."""
    for context in CONTEXTS:
        try:
            validate(build_config(name), **context)
            return context
        except ConfigError:
            continue
    raise AssertionError(f"experiment {name} validates in none of {CONTEXTS}")


def build_like_the_trainer(cfg: fdl.Config) -> None:
    """Completes every builder as the trainer does, on the host; the model is not built."""
    experiment = fdl.build(cfg)
    _ = experiment.run_dir, experiment.checkpoint_dir
    schedule = experiment.lr_schedule(total_steps=experiment.trainer.max_steps)
    parameter = torch.nn.Parameter(torch.ones(2, 2))
    optimizer = experiment.optimizer([parameter], schedule=schedule)
    optimizer.init_state()
    parameter.grad = torch.ones(2, 2)
    optimizer.step()
    experiment.data(host=HostShard())
    if experiment.eval.every_steps and experiment.eval.data is not None:
        experiment.eval.data(host=HostShard())


def _names_path(error: ConfigError, path: str) -> bool:
    """Whether the message names ``path`` whole (``name`` is not named by ``source.name``)."""
    return re.search(rf"(?<![\w.]){re.escape(path)}(?!\w)", str(error)) is not None


def run_case(base: fdl.Config, context: dict[str, Any], path: str, raw: Any, direct: bool):
    """Runs one case on a copy of ``base``; returns the escape, or None when it was handled.

    ``build_config(name, sets=[...])`` is the registry's config followed by
    ``apply_sets`` (``--fdl_set``'s parsing); the registry's config is made once
    per experiment and deep-copied here (a quarter of the cost).
    """
    shown = f"{base.name}: {path}={raw!r}"
    cfg = copy.deepcopy(base)
    try:
        if direct:  # as a config file could hold it: no command-line parsing
            fdl_flags.set_value_at_path(cfg, path, raw)
        else:
            apply_sets(cfg, [f"{path}={raw}"])
    except ConfigError as e:
        return None if _names_path(e, path) else f"{shown}: rejected without naming it: {e}"
    except Exception as e:
        return f"{shown}: {type(e).__name__} while parsing: {e}"
    try:
        validate(cfg, **context)
    except ConfigError as e:
        return None if _names_path(e, path) else f"{shown}: rejected without naming it: {e}"
    except Exception as e:
        return f"{shown}: {type(e).__name__} in validation: {e}"
    try:
        build_like_the_trainer(cfg)
    except Exception as e:
        return f"{shown}: accepted by validation, then {type(e).__name__} building it: {e}"
    return None


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> Paths:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "a_file.txt").write_text("not a directory\n")
    (root / "a_dir").mkdir()
    return Paths(str(root / "a_file.txt"), str(root / "a_dir"), str(root / "missing" / "x"))


def test_no_hostile_value_escapes_validation(paths):
    start = time.monotonic()
    escapes, known, cases = [], set(), 0
    for experiment in experiments.EXPERIMENTS:
        name = experiment.__name__
        base = build_config(name)
        assert copy.deepcopy(base) == build_config(name)  # the copy is what the CLI builds
        context = context_for(name)
        for leaf in leaves(base):
            values = [(raw, False) for raw in hostile_values(leaf, paths)]
            values += [(value, True) for value in file_values(leaf)]
            for raw, direct in values:
                cases += 1
                escape = run_case(base, context, leaf.path, raw, direct)
                if escape and (leaf.path, raw) in KNOWN_ESCAPES:
                    known.add((leaf.path, raw))
                elif escape:
                    escapes.append(escape)
    elapsed = time.monotonic() - start
    print(f"config fuzzer: {cases} cases in {elapsed:.1f} s, {len(escapes)} escapes")
    assert not escapes, f"{len(escapes)} of {cases} cases escaped:\n" + "\n".join(escapes)
    fixed = KNOWN_ESCAPES - known
    assert not fixed, f"no longer escaping, remove from KNOWN_ESCAPES: {sorted(fixed)}"


# Command lines with an impossible flag value, and the flag each must name. Every
# one must exit 2 before anything runs, without a traceback.
MAIN_CASES = (
    (("--fdl_config=llama_tiny", "--dry_run", "--num_devices=0"), ("--num_devices=0",)),
    (("--fdl_config=llama_tiny", "--num_devices=-8"), ("--num_devices=-8",)),
    (
        ("--fdl_config=llama_tiny_spmd", "--dry_run", "--num_devices=3"),
        ("--num_devices=3", "mesh.ici.tensor=2"),
    ),
    (
        ("--fdl_config=llama_8b", "--dry_run", "--target=v5p-7", "--num_slices=0"),
        ("--target=v5p-7",),
    ),
    (("--fdl_config=llama_tiny", "--explain=optimizer.nope"), ("optimizer.nope",)),
    (
        ("--fdl_config=llama_tiny", "--sweep=optimizer.lr=[1e-3,-1]", "--sweep_dir={tmp}/sweep"),
        ("trial_001 (optimizer.lr=-1)", "optimizer.lr=-1.0"),
    ),
)
LAUNCH_CASES = (
    (
        (
            "--fdl_config=llama_8b",
            "--target=v5p-256",
            "--num_slices=0",
            "--max_restarts=-1",
            "--image=registry/xlafw:1",
            "--workload=Bad_Name",
            "--env=1X=y",
            "--fdl.checkpoint.keep_last=0",
            "--manifest={tmp}/manifest.yaml",
        ),
        (
            "--num_slices=0",
            "--max_restarts=-1",
            "--workload=Bad_Name",
            "--env=1X=y",
            "checkpoint.keep_last=0",
        ),
    ),
    (
        (
            "--fdl_config=llama_8b",
            "--target=v5p-7",
            "--image=x",
            "--workload=w",
            "--manifest={tmp}",
        ),
        ("--target=v5p-7", "is a directory"),
    ),
)


def test_impossible_flags_exit_2_naming_the_flag_without_a_traceback(tmp_path):
    commands = [("xlafw.main", args, named) for args, named in MAIN_CASES]
    commands += [("xlafw.launch", args, named) for args, named in LAUNCH_CASES]
    env = {**os.environ, "PJRT_DEVICE": "CPU"}
    env.pop("CPU_NUM_DEVICES", None)
    running = [
        (
            module,
            args,
            named,
            subprocess.Popen(
                [sys.executable, "-m", module, *(a.format(tmp=tmp_path) for a in args)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for module, args, named in commands
    ]
    failures = []
    for module, args, named, process in running:
        out, err = process.communicate(timeout=300)
        command = f"python -m {module} {' '.join(args)}"
        if process.returncode != 2 or "Traceback" in err:
            failures.append(f"{command}: exit {process.returncode}\n{out}{err}")
        elif missing := [n for n in named if n not in err]:
            failures.append(f"{command}: does not name {missing}:\n{err}")
    assert not failures, "\n\n".join(failures)
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "manifest.yaml").exists()
