"""Sharding rules: parameter-name patterns to partition specs over mesh axes.

A rule's pattern matches a parameter's name with layer indices abstracted
(``model.layers.*.self_attn.q_proj.weight``). A spec lists, per tensor
dimension, the mesh axis (or tuple of axes) it is split over, or None.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re

Spec = tuple[str | tuple[str, ...] | None, ...]

_LAYER_INDEX = re.compile(r"\.\d+\.")


def abstract_name(name: str) -> str:
    """``model.layers.3.mlp.up_proj.weight`` -> ``model.layers.*.mlp.up_proj.weight``."""
    return _LAYER_INDEX.sub(".*.", name)


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """How parameters and activations are laid over the mesh.

    Attributes:
      parameters: ``(pattern, spec)`` pairs; the first pattern matching a
        parameter's abstracted name wins. A parameter no rule matches is
        replicated.
      activations: ``(module pattern, spec)`` pairs; the matched modules'
        outputs (and their gradients) are annotated with the spec.
    """

    parameters: tuple[tuple[str, Spec], ...] = ()
    activations: tuple[tuple[str, Spec], ...] = ()

    def spec_for(self, name: str) -> Spec | None:
        """Returns the spec of the first rule matching ``name``, or None."""
        abstract = abstract_name(name)
        for pattern, spec in self.parameters:
            if fnmatch.fnmatchcase(abstract, pattern):
                return spec
        return None

    def mesh_axes(self) -> set[str]:
        """Every mesh axis name the rules refer to."""
        axes: set[str] = set()
        for _, spec in (*self.parameters, *self.activations):
            for entry in spec:
                if isinstance(entry, str):
                    axes.add(entry)
                elif entry is not None:
                    axes.update(entry)
        return axes
