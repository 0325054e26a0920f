"""Applying Mesh, ShardingRules and RematPolicy to a built model (imports torch_xla).

Each function is one startup stage of the trainer and returns the line it logs.
The config-side classes live beside this module and import no torch_xla.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch_xla.distributed.spmd as xs

from xlafw.config.hardware import backend, detected_device_count
from xlafw.data.pipeline import HostShard
from xlafw.experiment import Experiment
from xlafw.parallel import remat_apply
from xlafw.parallel.mesh import AXIS_NAMES, BATCH_AXES, Mesh, host_data_shard
from xlafw.parallel.remat import RematPolicy
from xlafw.parallel.sharding import Spec, ways
from xlafw.runtime import RuntimeInfo


def wants_spmd(mesh: Mesh) -> bool:
    """SPMD on TPU always; on CPU when the mesh spans several virtual devices."""
    if backend() != "CPU":
        return True
    return mesh.needs_spmd(detected_device_count() or 1)


def patch_linears(model: torch.nn.Module, rt: RuntimeInfo) -> str:
    """Swaps nn.Linear for torch_xla's einsum form under SPMD.

    Measured in the compiled step's HLO (issue 17, BUILD_NOTES.md): plain
    nn.Linear flattens batch and sequence into one dimension but keeps their
    sharding under every stock rule set (no activation is gathered that the
    einsum form does not gather too); what it loses is the weights' layout in
    the backward, where it gathers every weight a second time, transposed:
    +15 collectives (+49% bytes) per step in llama_tiny's fsdp=4 step, +27 in
    fsdp 4 x tensor 2, +11 in Mixtral's expert parallelism. So the patch stays
    wherever parameters are sharded. On one device there is nothing to gather
    and the patch costs ~20% step time (BUILD_NOTES.md), so it is skipped there.
    """
    if not rt.spmd:
        return "nn.Linear kept (single device: nothing to shard)"
    from torch_xla.distributed.spmd.xla_sharding import apply_xla_patch_to_nn_linear

    apply_xla_patch_to_nn_linear(model)
    return (
        "nn.Linear patched to einsum form for SPMD (plain nn.Linear gathers each sharded "
        "weight again, transposed, in the backward)"
    )


def build_mesh(mesh: Mesh, num_devices: int) -> xs.Mesh:
    """Builds the torch_xla mesh; a hybrid (ICI x DCN) mesh when DCN axes > 1.

    ``xs.HybridMesh`` reads the TPU topology, so multi-slice meshes exist only
    on TPU; validation rejects DCN axes > 1 elsewhere.
    """
    sizes = mesh.resolve(num_devices)
    dcn = mesh.dcn.as_tuple()
    if math.prod(dcn) > 1:
        ici = tuple(sizes[a] // d for a, d in zip(AXIS_NAMES, dcn, strict=False))
        return xs.HybridMesh(ici_mesh_shape=ici, dcn_mesh_shape=dcn, axis_names=AXIS_NAMES)
    shape = tuple(sizes[a] for a in AXIS_NAMES)
    return xs.Mesh(np.arange(num_devices), shape, AXIS_NAMES)


@dataclasses.dataclass(frozen=True)
class Sharded:
    """What sharding the model decided for the rest of the run.

    Attributes:
      input_sharding: how batches are laid out on arrival (None on one device).
      data_shard: which part of the global batch this host reads.
      summary: the startup log line.
      axis_sizes: the mesh's axis sizes (empty on one device).
    """

    input_sharding: xs.ShardingSpec | None
    data_shard: HostShard
    summary: str
    axis_sizes: dict[str, int] = dataclasses.field(default_factory=dict)


def _annotate_output(mesh: xs.Mesh, spec: Spec):
    """A forward hook annotating the output (the first element of a tuple output)."""

    def hook(module, args, output):
        if isinstance(output, tuple):  # a layer that also returns per-layer statistics
            return (xs.mark_sharding_with_gradients(output[0], mesh, spec), *output[1:])
        return xs.mark_sharding_with_gradients(output, mesh, spec)

    return hook


def shard(model: torch.nn.Module, exp: Experiment, rt: RuntimeInfo) -> Sharded:
    """Builds and sets the global mesh; shards parameters and activations by the rules.

    Parameters get plain ``mark_sharding`` (gradient-sharding annotations on
    parameters make Mixtral OOM, pytorch/xla#8809); matched modules' outputs get
    ``mark_sharding_with_gradients`` through a forward hook, which annotates the
    backward too and leaves parameter names unchanged.
    """
    if not rt.spmd:
        return Sharded(
            None,
            HostShard(rt.process_index, rt.process_count),
            "single device: no mesh, parameters unsharded",
        )
    mesh = build_mesh(exp.mesh, rt.num_devices)
    xs.set_global_mesh(mesh)
    axis_sizes = dict(mesh.shape())
    per_device = total = 0
    for name, param in model.named_parameters():
        spec = exp.sharding.spec_for(name)
        pieces = 1
        if spec:
            xs.mark_sharding(param, mesh, spec)
            pieces = math.prod(ways(e, axis_sizes) for e in spec)
        nbytes = param.numel() * param.element_size()
        total += nbytes
        per_device += nbytes // pieces
    hooked = 0
    for name, module in model.named_modules():
        spec = exp.sharding.activation_spec_for(name) if name else None
        if spec is not None:
            module.register_forward_hook(_annotate_output(mesh, spec))
            hooked += 1
    seq_axis = "context" if axis_sizes["context"] > 1 else None
    input_spec = (BATCH_AXES, seq_axis)
    # Each host supplies only its rows when there are several hosts.
    input_sharding = xs.ShardingSpec(mesh, input_spec, minibatch=rt.process_count > 1)
    ids = np.asarray(mesh.device_ids).reshape(mesh.mesh_shape)
    rank, world = host_data_shard(ids, rt.num_devices // rt.process_count, rt.process_index)
    summary = (
        f"mesh {axis_sizes} over devices {[int(d) for d in mesh.device_ids]}; parameters "
        f"{total / 2**20:,.1f} MiB total, {per_device / 2**20:,.1f} MiB per device; "
        f"{hooked} modules with activation sharding; inputs sharded {input_spec}, "
        f"this host reads data split {rank}/{world}"
    )
    return Sharded(input_sharding, HostShard(rank, world), summary, axis_sizes)


def shard_optimizer_state(
    optimizer: torch.optim.Optimizer, model: torch.nn.Module, exp: Experiment, rt: RuntimeInfo
) -> None:
    """Gives each parameter-shaped optimizer state tensor its parameter's sharding.

    A real step propagates the same layout; doing it up front lets a checkpoint
    be restored in place, each host reading only its shards.
    """
    if not rt.spmd:
        return
    mesh = xs.get_global_mesh()
    for name, param in model.named_parameters():
        spec = exp.sharding.spec_for(name)
        for value in optimizer.state[param].values():
            if spec and isinstance(value, torch.Tensor) and value.shape == param.shape:
                xs.mark_sharding(value, mesh, spec)


def mark_pure_modules(model: torch.nn.Module, remat: RematPolicy) -> str:
    """Traces the named module classes once and reuses the trace (``assume_pure``)."""
    if not remat.pure_modules:
        return "no pure modules configured"
    modules = remat_apply.matching(model, remat.pure_modules)
    for module in modules:
        remat_apply.mark_pure(module)
    return f"assume_pure on {len(modules)} modules {remat.pure_modules}"


def apply_checkpointing(model: torch.nn.Module, remat: RematPolicy) -> str:
    """Scans the configured layer stack and recomputes the named module classes.

    With ``scan_layers`` the stack becomes one while loop; a checkpointed
    scanned layer is recomputed from its input by the scan's partitioner
    (torch_xla's checkpoint cannot run inside the traced layer). Elsewhere
    (``checkpoint_scope``) modules are wrapped with torch_xla's checkpoint.
    """
    lines = []
    layer_class = None
    if remat.scan_layers:
        scanned = remat_apply.scan_layers(model, remat)
        layer_class = scanned.layer_class
        how = "recomputed from its input" if layer_class in remat.checkpoint_modules else "saved"
        offload = (
            f", {list(remat.offload_tensors)} offloaded to host" if remat.offload_tensors else ""
        )
        lines.append(
            f"scan over {remat.scan_layers} ({len(scanned)} x {layer_class}, "
            f"activations {how}{offload})"
        )
    names = tuple(n for n in remat.checkpoint_modules if n != layer_class)
    if names:
        from torch_xla.distributed.fsdp import checkpoint_module

        modules = remat_apply.matching(model, names, remat.checkpoint_scope)
        for module in modules:
            checkpoint_module(module)
        where = f" under {remat.checkpoint_scope}" if remat.checkpoint_scope else ""
        lines.append(f"activation checkpointing on {len(modules)} modules {names}{where}")
    return "; ".join(lines) or "no activation checkpointing or scan configured"


def add_optimization_barriers(model: torch.nn.Module, remat: RematPolicy) -> str:
    """Fences the named module classes' gradients with optimization barriers."""
    if not remat.optimization_barrier_modules:
        return "no optimization barriers configured"
    modules = remat_apply.matching(model, remat.optimization_barrier_modules)
    for module in modules:
        xs.apply_backward_optimization_barrier(module)
    return f"optimization barriers on {len(modules)} modules {remat.optimization_barrier_modules}"
