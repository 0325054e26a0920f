"""Applying Mesh, ShardingRules and RematPolicy to a built model (imports torch_xla).

Each function is one startup stage of the trainer and returns the line it logs.
The config-side classes live beside this module and import no torch_xla.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch_xla.distributed.spmd as xs

from xlafw.experiment import Experiment
from xlafw.parallel.mesh import AXIS_NAMES, Mesh
from xlafw.parallel.remat import RematPolicy
from xlafw.runtime import RuntimeInfo


def wants_spmd(mesh: Mesh) -> bool:
    """SPMD on TPU always; on CPU when the mesh spans several virtual devices."""
    if os.environ.get("PJRT_DEVICE", "CPU").upper() != "CPU":
        return True
    return mesh.needs_spmd(int(os.environ.get("CPU_NUM_DEVICES", "1")))


def patch_linears(model: torch.nn.Module, rt: RuntimeInfo) -> str:
    """Swaps nn.Linear for torch_xla's einsum form under SPMD.

    Plain nn.Linear flattens batch and sequence into one dimension and loses
    their sharding; the einsum form keeps it. On one device there is nothing
    to keep and the patch costs ~20% step time (BUILD_NOTES.md), so it is
    skipped there.
    """
    if not rt.spmd:
        return "nn.Linear kept (single device: nothing to shard)"
    from torch_xla.distributed.spmd.xla_sharding import apply_xla_patch_to_nn_linear

    apply_xla_patch_to_nn_linear(model)
    return "nn.Linear patched to einsum form for SPMD"


def build_mesh(mesh: Mesh, num_devices: int) -> xs.Mesh:
    """Builds the torch_xla mesh; a hybrid (ICI x DCN) mesh when DCN axes > 1."""
    sizes = mesh.resolve(num_devices)
    if any(s > 1 for s in mesh.dcn.as_tuple()):
        ici = tuple(sizes[a] // d for a, d in zip(AXIS_NAMES, mesh.dcn.as_tuple(), strict=False))
        return xs.HybridMesh(
            ici_mesh_shape=ici, dcn_mesh_shape=mesh.dcn.as_tuple(), axis_names=AXIS_NAMES
        )
    shape = tuple(sizes[a] for a in AXIS_NAMES)
    return xs.Mesh(np.arange(num_devices), shape, AXIS_NAMES)


def shard(model: torch.nn.Module, exp: Experiment, rt: RuntimeInfo):
    """Builds and sets the global mesh, shards parameters by the rules.

    Returns:
      ``(input_sharding, log line)``; the input sharding is None on one device.
    """
    if not rt.spmd:
        return None, "single device: no mesh, parameters unsharded"
    mesh = build_mesh(exp.mesh, rt.num_devices)
    xs.set_global_mesh(mesh)
    sharded = 0
    for name, param in model.named_parameters():
        spec = exp.sharding.spec_for(name)
        if spec is not None:
            xs.mark_sharding(param, mesh, spec)
            sharded += 1
    batch_axes = ("data", "fsdp")
    seq_axis = "context" if mesh.shape()["context"] > 1 else None
    input_sharding = xs.ShardingSpec(mesh, (batch_axes, seq_axis))
    return input_sharding, (
        f"mesh {dict(mesh.shape())} over devices {list(mesh.device_ids)}; "
        f"{sharded} parameters sharded by rules; inputs {(batch_axes, seq_axis)}"
    )


def _matching(model: torch.nn.Module, class_names: tuple[str, ...]) -> list[torch.nn.Module]:
    return [m for m in model.modules() if type(m).__name__ in class_names]


def mark_pure_modules(model: torch.nn.Module, remat: RematPolicy) -> str:
    return "no pure modules configured"


def apply_checkpointing(model: torch.nn.Module, remat: RematPolicy) -> str:
    """Recomputes the named module classes in the backward pass."""
    if not remat.checkpoint_modules:
        return "no activation checkpointing configured"
    from torch_xla.distributed.fsdp import checkpoint_module

    modules = _matching(model, remat.checkpoint_modules)
    for module in modules:
        checkpoint_module(module)
    return f"activation checkpointing on {len(modules)} modules {remat.checkpoint_modules}"


def add_optimization_barriers(model: torch.nn.Module, remat: RematPolicy) -> str:
    """Fences the named module classes' gradients with optimization barriers."""
    if not remat.optimization_barrier_modules:
        return "no optimization barriers configured"
    modules = _matching(model, remat.optimization_barrier_modules)
    for module in modules:
        xs.apply_backward_optimization_barrier(module)
    return f"optimization barriers on {len(modules)} modules {remat.optimization_barrier_modules}"
