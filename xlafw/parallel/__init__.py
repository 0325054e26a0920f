"""Parallelism: the mesh, sharding rules and the remat policy (all pure config)."""

from xlafw.parallel.mesh import AXIS_NAMES, BATCH_AXES, AxisSizes, Mesh, MeshError, batch_ways
from xlafw.parallel.remat import RematPolicy
from xlafw.parallel.sharding import ShardingRules, Spec, abstract_name

__all__ = [
    "AXIS_NAMES",
    "BATCH_AXES",
    "AxisSizes",
    "Mesh",
    "MeshError",
    "RematPolicy",
    "ShardingRules",
    "Spec",
    "abstract_name",
    "batch_ways",
]
