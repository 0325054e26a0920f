"""Rematerialization policy: what to recompute, scan, fence or offload in the backward pass.

Pure config (no torch_xla); ``xlafw.parallel.remat_apply`` applies it to a
built model in the trainer's stages 9-11. Typical settings (torchprime's):

- 8B: ``checkpoint_modules=("LlamaDecoderLayer",)`` and
  ``optimization_barrier_modules=("LlamaDecoderLayer",)``;
- deep models: ``scan_layers="model.layers"`` with
  ``checkpoint_modules=("LlamaDecoderLayer",)`` (scan + remat: compile time flat
  in depth, each layer keeps only its input);
- 405B: the same plus ``offload_tensors=("decoder_input",)`` (the saved layer
  inputs live in host memory between forward and backward; TPU only).
"""

from __future__ import annotations

import dataclasses

from xlafw.arguments import InvalidArgument, raise_invalid, text, texts
from xlafw.parallel.mesh import BATCH_AXES
from xlafw.parallel.sharding import ShardingRules

# Tensors the scanned layer can send to host memory, by name.
OFFLOADABLE_TENSORS = ("decoder_input",)


@dataclasses.dataclass(frozen=True)
class RematPolicy:
    """Which modules trade compute for memory.

    Attributes:
      checkpoint_modules: class names of modules whose activations are
        recomputed in the backward pass (torch_xla's checkpoint). With
        ``scan_layers`` only the scanned layer's class may be named: it makes
        the scan recompute each layer from its input (scan + remat).
      checkpoint_scope: module path under which ``checkpoint_modules`` are
        looked for ("" = the whole model; e.g. "model.layers" leaves a vision
        tower or the LM head alone).
      scan_layers: module path of a homogeneous layer stack (a
        ``DecoderLayers`` list, e.g. "model.layers") to run as one XLA while
        loop (``torch_xla.experimental.scan``): the layer is traced and compiled
        once, so compile time stays flat as depth grows. None runs a Python loop.
      optimization_barrier_modules: class names whose gradients get an
        optimization barrier, so XLA cannot fuse across layer boundaries (and
        hoist recomputation out of a checkpointed layer). Not inside a scan.
      pure_modules: class names whose forward is traced once and reused
        (torch_xla's ``assume_pure``, needs jax): saves Python tracing time per
        step. Not inside a scan (scan already traces its layer once).
      offload_tensors: names of saved activations to keep in host memory
        between forward and backward (``OFFLOADABLE_TENSORS``); needs scan +
        checkpointing of the scanned layer and a TPU (XLA's CPU backend
        cannot compile host offload).
    """

    checkpoint_modules: tuple[str, ...] = ()
    checkpoint_scope: str = ""
    scan_layers: str | None = None
    optimization_barrier_modules: tuple[str, ...] = ()
    pure_modules: tuple[str, ...] = ()
    offload_tensors: tuple[str, ...] = ()

    def __post_init__(self):
        class_names = "module class names, e.g. ('LlamaDecoderLayer',); () for none."
        unknown = (
            [n for n in self.offload_tensors if n not in OFFLOADABLE_TENSORS]
            if isinstance(self.offload_tensors, tuple)
            else None
        )
        raise_invalid(
            texts("checkpoint_modules", self.checkpoint_modules, fix=class_names),
            None
            if self.checkpoint_scope == "" or text("", self.checkpoint_scope) is None
            else InvalidArgument(
                "checkpoint_scope",
                self.checkpoint_scope,
                "must be a module path such as 'model.layers', or '' for the whole model.",
            ),
            text(
                "scan_layers",
                self.scan_layers,
                allow_none=True,
                fix="a layer stack's module path such as 'model.layers', or None.",
            ),
            texts(
                "optimization_barrier_modules", self.optimization_barrier_modules, fix=class_names
            ),
            texts("pure_modules", self.pure_modules, fix=class_names),
            texts("offload_tensors", self.offload_tensors)
            or (
                InvalidArgument(
                    "offload_tensors",
                    self.offload_tensors,
                    f"names {unknown}; offloadable tensors: {list(OFFLOADABLE_TENSORS)}.",
                )
                if unknown
                else None
            ),
        )


def unannotated_scan_carry(remat: RematPolicy, rules: ShardingRules, spmd: bool) -> str | None:
    """A warning when a scanned layer stack has no activation rule under SPMD, else None.

    Without one, sharding propagation picks the scan carry's layout; measured on
    8 devices it split the hidden dimension while the saved activations were
    batch-split, a reshard every iteration and 33% more collectives than the
    unscanned loop (BUILD_NOTES.md, "8 virtual devices, and the 10x scan case").
    """
    path = remat.scan_layers
    if not spmd or not path or rules.activation_spec_for(f"{path}.0") is not None:
        return None
    return (
        f"remat.scan_layers={path!r} but no sharding.activations rule matches '{path}.*': "
        "the scan carry's sharding is left to propagation, which can reshard it every "
        f"layer. Fix: add ('{path}.*', ({BATCH_AXES!r}, None, None)) to "
        "sharding.activations, as the stock rule sets do."
    )
