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

AXIS_NAMES = ("data", "fsdp", "tensor", "context", "expert")


class MeshError(ValueError):
    """The mesh cannot be laid over the devices; the message says why."""


@dataclasses.dataclass(frozen=True)
class AxisSizes:
    """Size of each mesh axis. -1 (at most one axis) means "the rest"."""

    data: int = 1
    fsdp: int = 1
    tensor: int = 1
    context: int = 1
    expert: int = 1

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

    def resolve(self, num_devices: int) -> dict[str, int]:
        """Returns the total size of every axis for ``num_devices`` devices.

        Raises:
          MeshError: when the sizes cannot cover exactly ``num_devices``.
        """
        ici, dcn = self.ici.as_tuple(), self.dcn.as_tuple()
        if any(s == -1 for s in dcn) or any(s < 1 and s != -1 for s in ici + dcn):
            raise MeshError(f"mesh sizes must be >= 1 (ici may use -1 once): ici={ici} dcn={dcn}")
        if sum(s == -1 for s in ici) > 1:
            raise MeshError(f"at most one ICI axis may be -1, got ici={self.ici}")
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
