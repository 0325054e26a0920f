"""TPU slice types as GKE schedules them: chips, hosts, topology, node selectors.

One pod runs per TPU host VM and requests all of that host's chips
(``google.com/tpu``). The values are xpk 1.16's system characteristics
(``xpk/core/system_characteristics.py``), which also name the GKE node labels
the JobSet selects on (``cloud.google.com/gke-tpu-accelerator`` and
``cloud.google.com/gke-tpu-topology``); the slice shapes are the ones the Cloud
TPU documentation lists for each generation (BUILD_NOTES.md, "Pods: launch
through xpk", has the table and its sources). ``tests/test_launch.py`` checks
this table against xpk's own.

A slice is named the Cloud TPU way (``hardware.tpu_target``): ``v4-N`` and
``v5p-N`` count TensorCores (two per chip), ``v5e-N`` (xpk: ``v5litepod-N``)
and ``v6e-N`` count chips.
"""

from __future__ import annotations

import dataclasses
import math

from xlafw.config.errors import ConfigError
from xlafw.config.hardware import TPU_TYPES, tpu_target

# Generation -> (xpk's name prefix, GKE accelerator label, slice topologies).
_GENERATIONS = {
    "v4": (
        "v4",
        "tpu-v4-podslice",
        "2x2x1 2x2x2 2x2x4 2x4x4 4x4x4 4x4x8 4x8x8 8x8x8 8x8x12 8x8x16 8x16x16",
    ),
    "v5e": ("v5litepod", "tpu-v5-lite-podslice", "2x4 4x4 4x8 8x8 8x16 16x16"),
    "v5p": (
        "v5p",
        "tpu-v5p-slice",
        "2x2x1 2x2x2 2x2x4 2x4x4 4x4x4 4x4x8 4x8x8 8x8x8 8x8x16 8x16x16 16x16x16 16x16x24",
    ),
    "v6e": ("v6e", "tpu-v6e-slice", "1x1 2x2 2x4 4x4 4x8 8x8 8x16 16x16"),
}
_ALIASES = {"v5litepod": "v5e"}


@dataclasses.dataclass(frozen=True)
class SliceType:
    """One TPU slice type.

    Attributes:
      name: the slice's Cloud TPU name, as ``--target`` takes it (``v5p-256``).
      xpk_name: the name xpk's ``--tpu-type`` takes (``v5litepod-16`` for v5e-16).
      chips: chips in one slice (the devices xlafw shards over).
      chips_per_host: chips of one host VM, requested by each pod as ``google.com/tpu``.
      topology: the chip grid, GKE's ``cloud.google.com/gke-tpu-topology`` label.
      accelerator: GKE's ``cloud.google.com/gke-tpu-accelerator`` label.
    """

    name: str
    xpk_name: str
    chips: int
    chips_per_host: int
    topology: str
    accelerator: str

    @property
    def hosts(self) -> int:
        """Host VMs (and pods) per slice."""
        return self.chips // self.chips_per_host


def _table() -> dict[str, SliceType]:
    table = {}
    for generation, (xpk_prefix, accelerator, topologies) in _GENERATIONS.items():
        cores = TPU_TYPES[generation].cores_per_chip
        for topology in topologies.split():
            chips = math.prod(int(n) for n in topology.split("x"))
            # xpk schedules 4-chip VMs everywhere except the 1-chip shape.
            per_host = 1 if chips == 1 else 4
            size = chips * cores
            table[f"{generation}-{size}"] = SliceType(
                name=f"{generation}-{size}",
                xpk_name=f"{xpk_prefix}-{size}",
                chips=chips,
                chips_per_host=per_host,
                topology=topology,
                accelerator=accelerator,
            )
    return table


SLICE_TYPES = _table()


def slice_type(target: str) -> SliceType:
    """The slice type named ``target`` (``v5p-256``, ``v5e-16`` or ``v5litepod-16``).

    Raises:
      ConfigError: for a name that is not a TPU slice, or a size xpk cannot schedule.
    """
    tpu_target(target)  # the generic name checks: generation, whole chips
    generation, size = target.strip().lower().rsplit("-", 1)
    key = f"{_ALIASES.get(generation, generation)}-{size}"
    if key in SLICE_TYPES:
        return SLICE_TYPES[key]
    sizes = [s.name for s in SLICE_TYPES.values() if s.name.startswith(key.split("-")[0] + "-")]
    known = ", ".join(sizes) if sizes else f"none (generations: {', '.join(_GENERATIONS)})"
    raise ConfigError(
        f"--target={target}: not a slice shape xlafw.launch knows how to schedule. "
        f"Fix: one of {known}; or plan any size with "
        f"python -m xlafw.main --dry_run --target={target}."
    )
