"""Sums of squares of many tensors with one collective under SPMD.

A reduction of a sharded tensor costs one all-reduce in the partitioned step,
so per-parameter norms cost one all-reduce per parameter (XLA's CPU backend
combines none of them). ``sums_of_squares`` sums each tensor's local shard on
its device (manual sharding: no collective), stacks the partial sums and
combines them with one all-reduce for every tensor at once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch

_TILES = re.compile(r"devices=\[([0-9,]+)\]")


def sums_of_squares(
    tensors: Sequence[torch.Tensor], like: Sequence[torch.Tensor] | None = None
) -> torch.Tensor:
    """Each tensor's sum of squares in float32, as one ``[len(tensors)]`` vector.

    Args:
      tensors: the tensors (gradients, updates).
      like: for each tensor, one laid out the same way (its parameter, whose
        sharding the SPMD annotations set); None: the tensors themselves.

    Under SPMD each tensor whose sharded dimensions divide evenly is reduced
    on its local shard, and the partial sums of all of them are combined by
    one all-reduce; a shard's replicas (devices holding the same piece) each
    add their share divided by the number of replicas. A tensor split
    unevenly (padded shards) is reduced on its own (one all-reduce). Without
    SPMD, or off XLA: ``torch.stack([t.float().pow(2).sum() ...])``.
    """
    like = tensors if like is None else like
    mesh = _spmd_mesh(tensors)
    if mesh is None:
        return torch.stack([t.float().pow(2).sum() for t in tensors])
    import torch_xla

    xlac = torch_xla._XLAC
    num_devices = len(mesh.device_ids)
    local, local_index, alone = [], {}, {}
    for i, (tensor, ref) in enumerate(zip(tensors, like, strict=True)):
        replicas = _replicas(xlac._get_xla_sharding_spec(ref), tuple(ref.shape), num_devices)
        squares = tensor.float().pow(2)
        if replicas is None:
            alone[i] = squares.sum()
            continue
        sharding = xlac._get_xla_op_sharding(ref)
        if sharding is None:  # unannotated: replicated
            sharding = mesh.get_op_sharding((None,) * tensor.ndim)
        xlac._xla_mark_sharding(squares, sharding)
        shard = xlac._spmd_full_to_shard_shape(squares)
        local_index[i] = len(local)
        local.append(shard.sum() / replicas if replicas > 1 else shard.sum())
    if local:
        from torch_xla.distributed.spmd.xla_sharding import _mark_manual_sharding

        partial = torch.stack(local).unsqueeze(0)  # [1, tensors]: this device's sums
        _mark_manual_sharding(partial)
        every_device = mesh.get_op_sharding((tuple(mesh.axis_names), None))
        partials = xlac._spmd_shard_to_full_shape(
            partial, every_device, torch.Size([num_devices, len(local)]), torch.float32
        )
        combined = partials.sum(0)  # the one all-reduce
    return torch.stack(
        [combined[local_index[i]] if i in local_index else alone[i] for i in range(len(tensors))]
    )


def _spmd_mesh(tensors: Sequence[torch.Tensor]):
    """The global mesh when the tensors are XLA tensors under SPMD, else None."""
    if not tensors or tensors[0].device.type != "xla":
        return None
    import torch_xla.distributed.spmd as xs
    import torch_xla.runtime as xr

    if not xr.is_spmd():
        return None
    return xs.get_global_mesh()


def _replicas(spec: str, shape: tuple[int, ...], num_devices: int) -> int | None:
    """How many devices hold each shard of a tensor sharded as ``spec``.

    None when the layout has padded shards (a dimension not divisible by its
    tiles) or is one this module does not read (maximal, manual).
    """
    if spec in ("", "{replicated}"):
        return num_devices
    match = _TILES.search(spec)
    if match is None or "maximal" in spec or "manual" in spec or "last_tile_dims" in spec:
        return None
    tiles = [int(t) for t in match.group(1).split(",")]
    if "last_tile_dim_replicate" in spec:
        tiles = tiles[:-1]
    if len(tiles) != len(shape) or any(d % t for d, t in zip(shape, tiles, strict=True)):
        return None
    return num_devices // math.prod(tiles)
