"""Sharding rules: parameter-name patterns to partition specs over mesh axes.

A rule's pattern matches a parameter's (or module's) name segment by segment
(split on dots; ``fnmatch`` wildcards inside a segment, so ``*`` never spans
a dot): ``model.layers.*`` matches each decoder layer but not the modules
inside it, and ``model.layers.*.mlp.up_proj.weight`` matches that weight in
every layer. A spec lists, per
tensor dimension, the mesh axis (or tuple of axes) it is split over, or None.
An empty spec ``()`` replicates explicitly.

``check_rules`` tests rules against a model built on the meta device, so a
rule that matches nothing, a parameter no rule covers, an unknown axis or an
indivisible dimension is reported before anything runs.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import re
from collections.abc import Mapping

import torch

from xlafw.arguments import InvalidArgument, raise_invalid, show, text
from xlafw.parallel.mesh import AXIS_NAMES

Spec = tuple[str | tuple[str, ...] | None, ...]

_LAYER_INDEX = re.compile(r"(^|\.)\d+(?=\.|$)")


def abstract_name(name: str) -> str:
    """``model.layers.3.mlp.up_proj.weight`` -> ``model.layers.*.mlp.up_proj.weight``."""
    return _LAYER_INDEX.sub(r"\1*", name)


def matches(name: str, pattern: str) -> bool:
    """Whether ``name`` matches ``pattern`` segment by segment."""
    parts, wanted = name.split("."), pattern.split(".")
    return len(parts) == len(wanted) and all(
        fnmatch.fnmatchcase(p, w) for p, w in zip(parts, wanted, strict=False)
    )


def spec_axes(spec: Spec) -> list[str]:
    """The mesh axes a spec names, in order."""
    axes: list[str] = []
    for entry in spec:
        if isinstance(entry, str):
            axes.append(entry)
        elif entry is not None:
            axes.extend(entry)
    return axes


def ways(entry: str | tuple[str, ...] | None, axis_sizes: Mapping[str, int]) -> int:
    """How many pieces one spec entry splits a dimension into."""
    if entry is None:
        return 1
    names = (entry,) if isinstance(entry, str) else entry
    return math.prod(axis_sizes[n] for n in names)


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """How parameters and activations are laid over the mesh.

    Attributes:
      parameters: ``(pattern, spec)`` pairs; the first pattern matching a
        parameter's abstracted name wins.
      activations: ``(module pattern, spec)`` pairs; each matched module's
        output (and its gradient) is annotated with the spec.
    """

    parameters: tuple[tuple[str, Spec], ...] = ()
    activations: tuple[tuple[str, Spec], ...] = ()

    def __post_init__(self):
        raise_invalid(
            _rules_problem("parameters", self.parameters),
            _rules_problem("activations", self.activations),
        )

    @staticmethod
    def _first(rules, name: str) -> Spec | None:
        return next((s for p, s in rules if matches(name, p)), None)

    def spec_for(self, name: str) -> Spec | None:
        """The spec of the first parameter rule matching ``name``, or None."""
        return self._first(self.parameters, name)

    def activation_spec_for(self, module_name: str) -> Spec | None:
        """The spec of the first activation rule matching ``module_name``, or None."""
        return self._first(self.activations, module_name)

    def mesh_axes(self) -> set[str]:
        """Every mesh axis name the rules refer to."""
        return {a for _, spec in (*self.parameters, *self.activations) for a in spec_axes(spec)}


_RULE_FORM = (
    "a rule is (pattern, spec): a name pattern and one entry per tensor dimension, each a "
    "mesh axis, a tuple of axes or None, e.g. ('model.layers.*.mlp.up_proj.weight', "
    "('fsdp', 'tensor')); () replicates"
)


def _rules_problem(field: str, rules: object) -> InvalidArgument | None:
    """What is wrong with the form of one rule list (not with the model it is for)."""
    if not isinstance(rules, tuple):
        return InvalidArgument(field, rules, f"must be a tuple of rules; {_RULE_FORM}.")
    for i, rule in enumerate(rules):
        where = f"{field}[{i}]"
        if not isinstance(rule, tuple) or len(rule) != 2 or not isinstance(rule[1], tuple):
            return InvalidArgument(where, rule, f"is not a rule; {_RULE_FORM}.")
        pattern, spec = rule
        if text(where, pattern) is not None:
            return InvalidArgument(
                where, rule, f"its pattern {show(pattern)} is not a non-blank name pattern."
            )
        for entry in spec:
            names = entry if isinstance(entry, tuple) else (entry,)
            if entry is None or (names and all(isinstance(n, str) for n in names)):
                continue
            return InvalidArgument(
                where, rule, f"its spec entry {entry!r} is not an axis, a tuple of axes or None."
            )
        axes = spec_axes(spec)
        unknown = [a for a in axes if a not in AXIS_NAMES]
        if unknown:
            return InvalidArgument(
                where,
                rule,
                f"names mesh axes {unknown} that do not exist. Fix: use {', '.join(AXIS_NAMES)}.",
            )
        twice = sorted({a for a in axes if axes.count(a) > 1})
        if twice:
            return InvalidArgument(
                where,
                rule,
                f"splits over mesh axis {', '.join(twice)} more than once; an axis can "
                f"shard one dimension only. Fix: name each axis once.",
            )
    return None


def check_rules(
    model: torch.nn.Module, rules: ShardingRules, axis_sizes: Mapping[str, int]
) -> list[str]:
    """Checks rules against a (meta-device) model; returns the problems found.

    Reports parameters no rule covers (only when the mesh has more than one
    device), rules that match nothing, axes the mesh does not have, specs whose
    length differs from the tensor's rank, and dimensions not divisible by the
    number of ways they are split.
    """
    problems = []
    unknown = rules.mesh_axes() - set(axis_sizes)
    if unknown:
        problems.append(
            f"sharding rules name mesh axes {sorted(unknown)} that do not exist; "
            f"axes are {list(axis_sizes)}."
        )
        return problems
    multi_device = math.prod(axis_sizes.values()) > 1
    used = set()
    uncovered = []
    seen: set[str] = set()  # decoder layers repeat: report each abstract name once
    for name, param in model.named_parameters():
        abstract = abstract_name(name)
        if abstract in seen:
            continue
        seen.add(abstract)
        match = next(
            ((i, s) for i, (p, s) in enumerate(rules.parameters) if matches(name, p)),
            None,
        )
        if match is None:
            uncovered.append(abstract)
            continue
        index, spec = match
        used.add(index)
        if not spec:
            continue
        if len(spec) != param.dim():
            problems.append(
                f"sharding.parameters[{index}] gives {abstract} (shape {tuple(param.shape)}) "
                f"the spec {spec} of rank {len(spec)}; the tensor has rank {param.dim()}."
            )
            continue
        for dim, (size, entry) in enumerate(zip(param.shape, spec, strict=True)):
            n = ways(entry, axis_sizes)
            if size % n:
                problems.append(
                    f"{abstract}: dimension {dim} of size {size} is split {n} ways by "
                    f"{entry!r} (sharding.parameters[{index}]) and is not divisible. Fix: "
                    f"change the spec or the mesh."
                )
    if multi_device and uncovered:
        shown = sorted(set(uncovered))
        problems.append(
            f"{len(shown)} parameter names match no rule of sharding.parameters and would be "
            f"replicated on every device: {', '.join(shown[:5])}"
            f"{' ...' if len(shown) > 5 else ''}. Fix: add rules (use spec () to replicate on "
            f"purpose)."
        )
    for i, (pattern, _) in enumerate(rules.parameters):
        if i not in used:
            problems.append(f"sharding.parameters[{i}] ({pattern!r}) matches no parameter.")
    modules = [n for n, _ in model.named_modules() if n]
    for i, (pattern, _) in enumerate(rules.activations):
        if not any(matches(m, pattern) for m in modules):
            problems.append(f"sharding.activations[{i}] ({pattern!r}) matches no module.")
    return problems
