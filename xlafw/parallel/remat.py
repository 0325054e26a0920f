"""Rematerialization policy: what to recompute, scan or fence in the backward pass."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class RematPolicy:
    """Which modules trade compute for memory.

    Attributes:
      checkpoint_modules: class names of modules whose activations are
        recomputed in the backward pass (torch_xla's checkpoint).
      optimization_barrier_modules: class names whose gradients get an
        optimization barrier, so XLA cannot fuse across layer boundaries.
    """

    checkpoint_modules: tuple[str, ...] = ()
    optimization_barrier_modules: tuple[str, ...] = ()

    @property
    def is_noop(self) -> bool:
        return not (self.checkpoint_modules or self.optimization_barrier_modules)
