"""What a pod launch checks beyond ``validate``: names, environment, run directory, hosts.

Each function returns a list of problems ("path: problem. Fix: ..."), empty
when all is well, so the launcher can report every problem at once before it
writes or submits anything.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import fiddle as fdl
import numpy as np

from xlafw.launch.slices import SliceType
from xlafw.parallel.mesh import AXIS_NAMES, Mesh, MeshError, host_data_shard, hybrid_device_ids

# GKE and xpk: a DNS label, starting with a letter; xpk caps workload names at 40.
WORKLOAD_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
MAX_WORKLOAD_NAME = 40
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Set by the launcher itself: the pods run torch_xla on the TPU backend.
RESERVED_ENV = ("PJRT_DEVICE",)


def workload_problems(name: str | None) -> list[str]:
    """``--workload`` against GKE's naming rules (as xpk enforces them)."""
    if not name:
        return ["--workload is required: the JobSet's name. Fix: --workload=llama8b-run1."]
    problems = []
    if len(name) > MAX_WORKLOAD_NAME:
        problems.append(
            f"--workload={name}: {len(name)} characters; GKE workload names (xpk) allow at most "
            f"{MAX_WORKLOAD_NAME}. Fix: shorten it, e.g. --workload={name[:MAX_WORKLOAD_NAME]}."
        )
    if not WORKLOAD_NAME.fullmatch(name):
        fixed = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
        problems.append(
            f"--workload={name}: a workload name is lower-case letters, digits and dashes, "
            f"starting with a letter and not ending with a dash. Fix: --workload={fixed or 'run1'}."
        )
    return problems


def parse_env(items: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """``["KEY=VALUE", ...]`` -> ``({KEY: VALUE}, problems)`` for ``--env``.

    xpk writes each value into the manifest inside a double-quoted YAML
    string, so a quote, a backslash or a line break would change or break it.
    """
    env, problems = {}, []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not ENV_NAME.fullmatch(key):
            problems.append(
                f"--env={item}: expected KEY=VALUE with KEY a variable name (letters, digits, "
                f"underscores; not starting with a digit), as in --env=HF_TOKEN=hf_..."
            )
        elif any(c in value for c in '"\\\n\r'):
            problems.append(
                f"--env={key}=...: the value contains a quote, backslash or line break, which "
                f"xpk cannot write into the manifest. Fix: pass such values through a file in "
                f"the image or the run directory."
            )
        elif key in RESERVED_ENV:
            problems.append(f"--env={key}: set by xlafw.launch (TPU). Fix: drop it.")
        else:
            env[key] = value
    return env, problems


def manifest_problems(path: str) -> list[str]:
    """``--manifest`` names a file the launcher can write (with its config and script beside it)."""
    manifest = Path(path).expanduser()
    if manifest.is_dir():
        return [
            f"--manifest={path} is a directory. Fix: a file path inside it, e.g. "
            f"--manifest={manifest / 'jobset.yaml'}."
        ]
    parent = manifest.parent
    while not parent.exists() and parent.parent != parent:
        parent = parent.parent
    if not parent.is_dir():
        return [f"--manifest={path}: {parent} is a file, so the manifest cannot be written."]
    if not os.access(parent, os.W_OK | os.X_OK):
        return [f"--manifest={path}: {parent} is not writable. Fix: another directory."]
    return []


def _in_bucket(directory: str) -> bool:
    return directory.startswith("gs://") and len(directory) > len("gs://")


def run_dir_problems(run_dir: str, hosts: int) -> list[str]:
    """``trainer.run_dir`` must be a bucket every pod can read and write.

    The pods read ``config.json`` from it, and a directory on a pod's own disk
    is lost with the pod (and, on several hosts, each host would see another).
    """
    if _in_bucket(run_dir):
        return []
    hosts_text = f"{hosts} hosts" if hosts > 1 else "a pod"  # 0: the slice is unknown
    return [
        f"trainer.run_dir={run_dir}: a launch on {hosts_text} needs a gs:// run directory: "
        f"every pod reads config.json from it and writes checkpoints to it, and a local path "
        f"is lost with the pod. Fix: --fdl_set=trainer.run_dir=gs://BUCKET/runs/NAME."
    ]


def checkpoint_dir_problems(checkpoint_dir: str) -> list[str]:
    """``checkpoint.directory`` must be a bucket too: process 0 commits every host's files."""
    if _in_bucket(checkpoint_dir):
        return []
    return [
        f"checkpoint.directory={checkpoint_dir}: checkpoints of a pod must go to a gs:// "
        f"directory: process 0 commits a checkpoint only when it sees every host's files, and "
        f"a pod's local disk is lost with it. Fix: leave it at '{{run_dir}}/checkpoints' or "
        f"--fdl_set=checkpoint.directory=gs://BUCKET/PATH."
    ]


def host_batch_problems(cfg: fdl.Config, slice_: SliceType, num_slices: int) -> list[str]:
    """Each host must hold whole batch shards, and the global batch must split over hosts.

    Uses the same device order as the trainer (``parallel.apply.build_mesh``):
    the logical multi-slice order when DCN axes > 1, else devices in id order.
    Mesh errors themselves are reported by ``validate``.
    """
    chips = slice_.chips * num_slices
    try:
        mesh: Mesh = fdl.build(cfg.mesh)
        sizes = mesh.resolve(chips)
    except ValueError:  # an invalid mesh (InvalidArgument, MeshError): validate reports it
        return []
    dcn = mesh.dcn.as_tuple()
    if math.prod(dcn) > 1:
        ici = tuple(sizes[a] // d for a, d in zip(AXIS_NAMES, dcn, strict=True))
        ids = hybrid_device_ids(ici, dcn)
    else:
        ids = np.arange(chips).reshape([sizes[a] for a in AXIS_NAMES])
    try:
        _, readers = host_data_shard(ids, slice_.chips_per_host, 0)
    except MeshError as e:
        where = f"{num_slices} x {slice_.name} ({slice_.chips_per_host} chips per host)"
        return [f"mesh: on {where}: {e}"]
    batch = cfg.data.global_batch_size
    if not isinstance(batch, int) or batch < 1:
        return []  # validate reports it
    if batch % readers:
        return [
            f"data.global_batch_size={batch} does not split over the {readers} hosts that read "
            f"distinct data ({slice_.chips_per_host} chips per host). Fix: a multiple of "
            f"{readers}."
        ]
    return []


def flat_mesh_note(cfg: fdl.Config, num_slices: int) -> str | None:
    """A note when a multi-slice mesh has no DCN axis: its ICI axes cross slices."""
    mesh: Mesh = fdl.build(cfg.mesh)
    if num_slices == 1 or math.prod(mesh.dcn.as_tuple()) != 1:
        return None
    return (
        f"note: mesh.dcn is all 1 on {num_slices} slices, so the mesh is laid flat over every "
        f"chip and its ICI axes cross the data-center network between slices. For data "
        f"parallelism across slices instead: --fdl_set=mesh.dcn.data={num_slices}."
    )
