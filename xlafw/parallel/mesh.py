"""The device mesh, described by axis sizes and built at run time.

Axes follow torchprime and MaxText: ``data`` (pure data parallel), ``fsdp``
(data parallel with parameters, gradients and optimizer state sharded),
``tensor`` (Megatron-style tensor parallel), ``context`` (sequence parallel)
and ``expert``. ICI sizes describe one slice; DCN sizes multiply them across
slices. One ICI axis may be -1: it takes whatever the device count leaves.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from xlafw.arguments import InvalidArgument, instance, integer, is_int, raise_invalid

AXIS_NAMES = ("data", "fsdp", "tensor", "context", "expert")
# The axes the batch dimension is split over, in this order (the input sharding,
# the activation rules, the data split per host and the divisibility checks all
# read it). ``expert`` is one of them: outside the MoE blocks the expert axis is
# data parallel, as in MaxText, so no device computes another's tokens.
BATCH_AXES = ("data", "fsdp", "expert")


def batch_ways(axis_sizes: dict[str, int]) -> int:
    """Into how many parts the batch dimension is split (``BATCH_AXES`` multiplied)."""
    return math.prod(axis_sizes.get(a, 1) for a in BATCH_AXES)


class MeshError(ValueError):
    """The mesh cannot be laid over the devices; the message says why."""


def _axis_size_problem(name: str, size: object) -> InvalidArgument | None:
    if is_int(size) and size == -1:
        return None
    return integer(
        name, size, at_least=1, fix="a size >= 1, or -1 for the devices the other axes leave."
    )


@dataclasses.dataclass(frozen=True)
class AxisSizes:
    """Size of each mesh axis. -1 (at most one ICI axis) means "the rest"."""

    data: int = 1
    fsdp: int = 1
    tensor: int = 1
    context: int = 1
    expert: int = 1

    def __post_init__(self):
        raise_invalid(*(_axis_size_problem(name, getattr(self, name)) for name in AXIS_NAMES))

    def as_tuple(self) -> tuple[int, ...]:
        return tuple(getattr(self, name) for name in AXIS_NAMES)


@dataclasses.dataclass(frozen=True)
class Mesh:
    """A logical device mesh.

    Attributes:
      ici: axis sizes inside one slice (fast interconnect). The default puts
        every device on ``fsdp``.
      dcn: axis sizes across slices (data-center network); all 1 for one slice.
    """

    ici: AxisSizes = AxisSizes(fsdp=-1)
    dcn: AxisSizes = AxisSizes()

    def __post_init__(self):
        raise_invalid(instance("ici", self.ici, AxisSizes), instance("dcn", self.dcn, AxisSizes))
        rest = [axis for axis in AXIS_NAMES if getattr(self.ici, axis) == -1]
        raise_invalid(
            *(
                InvalidArgument(
                    f"ici.{axis}",
                    -1,
                    f"at most one ICI axis may be -1 (the rest of the devices), and "
                    f"{' and '.join(rest)} are. Fix: give all but one of them a size.",
                )
                for axis in (rest if len(rest) > 1 else ())
            ),
            *(
                InvalidArgument(
                    f"dcn.{axis}",
                    -1,
                    "DCN sizes cannot be -1: they multiply to the slice count. Fix: a size "
                    "(1 on one slice).",
                )
                for axis in AXIS_NAMES
                if getattr(self.dcn, axis) == -1
            ),
        )

    def resolve(self, num_devices: int) -> dict[str, int]:
        """Returns the total size of every axis for ``num_devices`` devices.

        Raises:
          MeshError: when the sizes cannot cover exactly ``num_devices``.
        """
        ici, dcn = self.ici.as_tuple(), self.dcn.as_tuple()
        if num_devices < 1:
            raise MeshError(f"a mesh needs at least one device, got {num_devices}.")
        fixed = math.prod(s for s in ici if s != -1) * math.prod(dcn)
        if -1 in ici:
            if num_devices % fixed:
                raise MeshError(
                    f"the fixed mesh axes multiply to {fixed}, which does not divide "
                    f"{num_devices} devices. Fix: choose axis sizes whose product divides "
                    f"{num_devices}."
                )
            ici = tuple(num_devices // fixed if s == -1 else s for s in ici)
        total = math.prod(ici) * math.prod(dcn)
        if total != num_devices:
            raise MeshError(
                f"the mesh covers {total} devices (ici={dict(zip(AXIS_NAMES, ici, strict=False))}, "
                f"dcn={dict(zip(AXIS_NAMES, dcn, strict=False))}) but {num_devices} are available. "
                f"Fix: make the product of the axis sizes {num_devices}, or set one ICI "
                f"axis to -1."
            )
        return {name: i * d for name, i, d in zip(AXIS_NAMES, ici, dcn, strict=False)}

    def needs_spmd(self, num_devices: int) -> bool:
        """True when the mesh spans more than one device."""
        return math.prod(self.resolve(num_devices).values()) > 1


def hybrid_device_ids(ici: tuple[int, ...], dcn: tuple[int, ...]) -> np.ndarray:
    """Device ids of a multi-slice mesh, shaped ``ici[i] * dcn[i]`` per axis.

    Slice ``s`` owns devices ``[s * per_slice, (s + 1) * per_slice)``. Along each
    axis the DCN index is the outer part of the coordinate (coordinate
    ``d * ici[i] + j``), so collectives over an ICI-only axis never leave a slice.
    On TPU, ``xs.HybridMesh`` additionally orders devices inside a slice by the
    physical torus; this is the logical arithmetic it builds on.
    """
    n = len(ici)
    per_slice = math.prod(ici)
    slices = np.arange(math.prod(dcn)).reshape(dcn + (1,) * n)
    local = np.arange(per_slice).reshape((1,) * n + ici)
    ids = slices * per_slice + local  # shape dcn + ici
    interleaved = [k for i in range(n) for k in (i, n + i)]
    return ids.transpose(interleaved).reshape([d * i for d, i in zip(dcn, ici, strict=False)])


def host_data_shard(
    device_ids: np.ndarray, devices_per_host: int, process_index: int
) -> tuple[int, int]:
    """Which part of the global batch one host must read.

    The batch dimension is split over ``BATCH_AXES`` (data x fsdp x expert):
    device ``d`` at mesh coordinate ``(data=a, fsdp=f, expert=e, ...)`` holds
    batch shard ``(a * fsdp + f) * expert + e``. A
    host needs the shards of its own devices (host ``h`` owns device ids
    ``[h * devices_per_host, (h + 1) * devices_per_host)``). Hosts that need
    the same shards (a mesh whose tensor axis spans hosts) read the same data;
    the others read disjoint data.

    Args:
      device_ids: the mesh's device ids, shaped by the axes in ``AXIS_NAMES``.
      devices_per_host: addressable devices per process.
      process_index: this host.

    Returns:
      ``(rank, world)``: this host reads data split ``rank`` of ``world``,
      each ``1/world`` of the global batch.

    Raises:
      MeshError: when hosts would need overlapping, unequal or non-contiguous
        parts of the batch.
    """
    shape = dict(zip(AXIS_NAMES, device_ids.shape, strict=False))
    hosts: dict[int, set[int]] = {}
    batch_dims = [AXIS_NAMES.index(a) for a in BATCH_AXES]
    batch_shape = [shape[a] for a in BATCH_AXES]
    for coord, device in np.ndenumerate(device_ids):
        shard = int(np.ravel_multi_index([coord[i] for i in batch_dims], batch_shape))
        hosts.setdefault(int(device) // devices_per_host, set()).add(shard)
    groups = sorted({frozenset(s) for s in hosts.values()}, key=min)
    total = batch_ways(shape)
    sizes = {len(g) for g in groups}
    covered = sorted(s for g in groups for s in g)
    if len(sizes) != 1 or covered != list(range(total)):
        raise MeshError(
            f"hosts would read overlapping or unequal parts of the batch with mesh "
            f"{shape}; Fix: order the mesh so each host holds whole batch shards."
        )
    for g in groups:
        if sorted(g) != list(range(min(g), min(g) + len(g))):
            raise MeshError(
                f"a host's batch shards {sorted(g)} are not contiguous in mesh {shape}."
            )
    return groups.index(frozenset(hosts[process_index])), len(groups)
