"""Every host-side builder of an experiment, made before anything runs (``construct``).

Each builder checks its own arguments when it is made and raises
``xlafw.arguments.InvalidArgument``. ``construct`` makes every Buildable of an
experiment config, children before parents, each once, so an error is
reported at the config path of the builder that raised it
(``optimizer.betas=...``); then it completes the partially specified builders
as the trainer will, with stand-ins for what only exists at run time (the
optimizer over one stand-in parameter, the schedule for ``trainer.max_steps``
steps, each pipeline for one host). Nothing reads data or touches a device;
the model itself is built on the meta device only (``meta_model_on``).
``validation`` reads the results.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import fiddle as fdl
import torch

from xlafw.arguments import InvalidArgument
from xlafw.config.plan import meta_model_of

# The partially specified builders of an Experiment and what the trainer supplies to
# each (ARCHITECTURE.md, "The typed builders"): argument -> why it must not be set.
COMPLETED_BY_TRAINER = {
    "optimizer": {
        "params": "the trainer passes the model's parameters. Fix: remove it.",
        "schedule": "the trainer passes the one lr_schedule makes. Fix: remove it and "
        "configure lr_schedule.",
    },
    "lr_schedule": {
        "total_steps": "the trainer passes trainer.max_steps. Fix: remove it and set "
        "trainer.max_steps.",
    },
    "data": {"host": "the trainer passes this host's share of the data. Fix: remove it."},
    "eval.data": {"host": "the trainer passes this host's share of the data. Fix: remove it."},
}


def error_problems(path: str, error: BaseException) -> list[str]:
    """A builder's exception as problems naming the config path (Fiddle's wrapper removed)."""
    error = getattr(error, "proxy_base_exception", error)
    prefix = f"{path}." if path else ""
    if isinstance(error, InvalidArgument):
        return [e.described(prefix) for e in error.errors]
    where = path or "the experiment"
    if isinstance(error, (ValueError, OSError)):
        return [f"{where}: {error}"]
    return [f"{where}: {type(error).__name__}: {error}"]


def contains(path: str, other: str) -> bool:
    """Whether config path ``other`` is ``path`` or lies below it."""
    return not path or other == path or other.startswith((f"{path}.", f"{path}["))


@dataclasses.dataclass
class Builders:
    """The host-side builders of an experiment, made by ``construct``.

    Attributes:
      objects: config path -> built value, for every Buildable that built
        ("" is the ``Experiment``; partially specified builders are
        ``functools.partial`` objects here).
      completed: config path of a partially specified builder -> what it
        returned with the trainer's stand-ins (the optimizer, the schedule,
        the pipelines).
      failed: paths of the Buildables (and completions) that raised.
      problems: one message per bad argument, naming its config path.
    """

    objects: dict[str, Any] = dataclasses.field(default_factory=dict)
    completed: dict[str, Any] = dataclasses.field(default_factory=dict)
    failed: set[str] = dataclasses.field(default_factory=set)
    problems: list[str] = dataclasses.field(default_factory=list)

    def ok(self, path: str) -> bool:
        """Whether nothing at or below ``path`` failed (and ``path`` was made)."""
        return path in self.objects and not any(contains(path, f) for f in self.failed)

    def attempt(self, path: str, make: Callable[[], Any]) -> Any:
        """Runs ``make``; on an exception records its problems under ``path`` and returns None."""
        try:
            return make()
        except Exception as e:  # a constructor called with the user's arguments: a user error
            self.failed.add(path)
            self.problems.extend(error_problems(path, e))
            return None


_FAILED = object()


def construct(cfg: fdl.Buildable) -> Builders:
    """Makes every Buildable of ``cfg`` (children first) and completes the trainer's builders.

    Each Buildable is built once, from its children's results, so an error is
    reported at the path of the builder that raised it and its parents are
    skipped. The model is not made here (``meta_model_on`` builds it on the meta
    device); its config is. Nothing reads data or touches a device.
    """
    built = Builders()
    memo: dict[int, Any] = {}  # shared sub-configs are built once, as fdl.build does

    def make(value: Any, path: str) -> Any:
        if isinstance(value, fdl.Buildable):
            if id(value) not in memo:
                memo[id(value)] = make_buildable(value, path)
            return memo[id(value)]
        if isinstance(value, (tuple, list)):
            items = [make(v, f"{path}[{i}]") for i, v in enumerate(value)]
            return _FAILED if any(v is _FAILED for v in items) else type(value)(items)
        if isinstance(value, dict):
            items = {k: make(v, f"{path}[{k!r}]") for k, v in value.items()}
            return _FAILED if any(v is _FAILED for v in items.values()) else items
        return value

    def make_buildable(value: fdl.Buildable, path: str) -> Any:
        parts = {
            name: make(arg, f"{path}.{name}" if path else name)
            for name, arg in value.__arguments__.items()
        }
        if any(v is _FAILED for v in parts.values()):
            built.failed.add(path)  # a part failed and was reported at its own path
            return _FAILED
        alone = copy.copy(value)  # this node with its parts already built
        for name, part in parts.items():
            setattr(alone, name, part)
        result = built.attempt(path, lambda: fdl.build(alone))
        if path in built.failed:
            return _FAILED
        built.objects[path] = result
        return result

    make(cfg, "")
    complete(cfg, built)
    return built


def complete(cfg: fdl.Buildable, built: Builders) -> None:
    """Calls the partially specified builders with stand-ins for what the trainer supplies."""
    for path, supplied in COMPLETED_BY_TRAINER.items():
        node = _node_at(cfg, path)
        if not isinstance(node, fdl.Buildable):
            continue
        for name, why in supplied.items():
            if name in node.__arguments__:
                built.failed.add(path)
                built.problems.append(f"{path}.{name} is supplied at run time: {why}")
    trainer = built.objects.get("trainer")
    schedule = None
    if built.ok("lr_schedule") and built.ok("trainer"):
        steps = trainer.max_steps
        schedule = built.attempt(
            "lr_schedule", lambda: built.objects["lr_schedule"](total_steps=steps)
        )
        if schedule is not None:
            built.completed["lr_schedule"] = schedule
            for step in sorted({1, steps}):
                factor = built.attempt(
                    "lr_schedule", lambda step=step: float(schedule(torch.tensor(float(step))))
                )
                if factor is not None and not (math.isfinite(factor) and factor >= 0):
                    built.failed.add("lr_schedule")
                    built.problems.append(
                        f"lr_schedule: multiplies the learning rate by {factor} at step {step}; "
                        f"a schedule must give a finite factor >= 0. Fix: check its settings."
                    )
                if not built.ok("lr_schedule"):
                    break
    if built.ok("optimizer"):
        from xlafw.optim import Constant

        stand_in = [torch.nn.Parameter(torch.zeros(1))]
        optimizer = built.attempt(
            "optimizer",
            lambda: built.objects["optimizer"](stand_in, schedule=schedule or Constant()),
        )
        if optimizer is not None:
            built.completed["optimizer"] = optimizer
    from xlafw.data.pipeline import HostShard

    for path in ("data", "eval.data"):
        if built.ok(path) and built.objects[path] is not None:
            pipeline = built.attempt(path, lambda path=path: built.objects[path](host=HostShard()))
            if pipeline is not None:
                built.completed[path] = pipeline


def _node_at(cfg: fdl.Buildable, path: str) -> Any:
    node: Any = cfg
    for name in path.split("."):
        node = getattr(node, name, None) if isinstance(node, fdl.Buildable) else None
    return node


def meta_model_on(built: Builders) -> torch.nn.Module:
    """The model on the meta device; validations of an equal model share one.

    Validation only reads it (names, shapes, module classes), so sweep trials,
    repeated checks and the config fuzzer build each model once: a 405B
    model's 126 layers take a fifth of a second even on the meta device.
    """
    builder = built.objects["model"]
    if isinstance(builder, functools.partial):
        key = (builder.func, builder.args, tuple(sorted(builder.keywords.items())))
        try:
            return _cached_meta_model(key)
        except TypeError:  # unhashable arguments: build it every time
            pass
    return meta_model_of(builder)


@functools.lru_cache(maxsize=4)
def _cached_meta_model(key: tuple) -> torch.nn.Module:
    func, args, keywords = key
    return meta_model_of(functools.partial(func, *args, **dict(keywords)))
