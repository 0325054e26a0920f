"""Running xpk: one ``xpk workload create`` command, as a dry run or for real.

xpk (PyPI) is the command TPU users run on GKE: it writes a JobSet for the slice
type and applies it with kubectl. Its pins clash with torch_xla's environment,
so it lives in a virtual environment of its own: the launcher runs
``$XLAFW_XPK`` (the Makefile points it at ``~/.cache/xlafw/xpk-<hash>/bin/xpk``),
else ``xpk`` from ``PATH``.

The manifest comes from ``--dry-run --skip-validation --output-manifest-file``:
xpk then prints the kubectl/gcloud calls it would make instead of making them,
and needs no cluster, credentials or network. It runs with a scratch ``HOME``
(xpk keeps settings under ``~/.config/xpk``), telemetry off and no automatic
download of missing tools. A submission runs the same command without those
three flags, with the user's own ``HOME``, kubectl and gcloud.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from xlafw.launch.slices import SliceType

# Stand-ins for a dry run when --cluster, --project or --zone is not given: xpk
# requires them, but they do not change the manifest.
DRY_RUN_PLACEHOLDERS = {"cluster": "cluster", "project": "project", "zone": "zone-a"}
DRY_RUN_FLAGS = ("--dry-run", "--skip-validation")
DRY_RUN_ENV = {"TELEMETRY_ENABLED": "false", "DEPENDENCY_AUTO_DOWNLOAD": "false"}
SUBMIT_TOOLS = ("kubectl", "gcloud")
# The container name xpk gives the training container (its --docker-name default).
CONTAINER = "jax-tpu"


class XpkError(RuntimeError):
    """xpk failed; the message carries its output."""


class MissingTool(Exception):
    """xpk, kubectl or gcloud is not installed; the message says how to get it."""


@dataclasses.dataclass(frozen=True)
class Workload:
    """What ``xpk workload create`` is asked for.

    Attributes:
      name: the JobSet's name (``--workload``).
      slice_type: the TPU slice of each replica.
      num_slices: how many slices (replicas of the slice job).
      image: the container image every pod runs.
      command: the command each pod runs (xpk wraps it in ``bash -c``).
      env: environment variables of the container.
      max_restarts: how many times the JobSet may restart after a restartable exit.
      cluster: the GKE cluster; None writes a placeholder.
      project: the Google Cloud project; None leaves xpk's default (gcloud config).
      zone: the cluster's zone; None leaves xpk's default (gcloud config).
    """

    name: str
    slice_type: SliceType
    num_slices: int
    image: str
    command: str
    env: Mapping[str, str]
    max_restarts: int
    cluster: str | None = None
    project: str | None = None
    zone: str | None = None

    def create_args(self, placeholders: Mapping[str, str] | None = None) -> list[str]:
        """Arguments of ``xpk workload create`` (``placeholders`` fill missing locations)."""
        args = ["workload", "create", "--workload", self.name]
        for flag in ("cluster", "project", "zone"):
            value = getattr(self, flag) or (placeholders or {}).get(flag)
            if value:
                args += [f"--{flag}", value]
        args += [
            "--docker-image", self.image,
            "--tpu-type", self.slice_type.xpk_name,
            "--num-slices", str(self.num_slices),
            "--max-restarts", str(self.max_restarts),
            "--command", self.command,
        ]  # fmt: skip
        for key, value in self.env.items():
            args += ["--env", f"{key}={value}"]
        return args


def find_xpk() -> str:
    """The xpk executable: ``$XLAFW_XPK`` if set, else ``xpk`` on ``PATH``.

    Raises:
      MissingTool: when neither exists.
    """
    configured = os.environ.get("XLAFW_XPK")
    if configured:
        if os.access(configured, os.X_OK):
            return configured
        raise MissingTool(
            f"XLAFW_XPK={configured}: no such executable. Fix: run `make env` (it builds "
            f"xpk's own environment there), or unset XLAFW_XPK to use xpk from PATH."
        )
    found = shutil.which("xpk")
    if found:
        return found
    raise MissingTool(
        "xpk is not installed: xlafw.launch writes and submits the JobSet through it. Fix: "
        "run through make (`make env` builds xpk in its own environment and exports "
        "XLAFW_XPK), or `pip install -r requirements-xpk.txt` in a separate virtualenv and "
        "put its xpk on PATH."
    )


def check_submit_tools() -> None:
    """Raises ``MissingTool`` naming each of kubectl and gcloud missing from ``PATH``."""
    missing = [tool for tool in SUBMIT_TOOLS if shutil.which(tool) is None]
    if missing:
        raise MissingTool(
            f"{' and '.join(missing)} not found on PATH: submitting runs xpk, which calls "
            f"kubectl and gcloud with your credentials. Fix: install the Google Cloud CLI "
            f"with kubectl (gcloud components install kubectl) and run gcloud auth login; "
            f"or add --manifest=PATH to only write the manifest and the commands."
        )


def dry_run(xpk: str, workload: Workload) -> str:
    """Runs xpk's dry run offline and returns the JobSet manifest it wrote (YAML text).

    Raises:
      XpkError: when xpk fails or writes no manifest.
    """
    with tempfile.TemporaryDirectory(prefix="xlafw-xpk-") as scratch:
        manifest = Path(scratch) / "jobset.yaml"
        home = Path(scratch) / "home"
        home.mkdir()
        args = [xpk, *workload.create_args(DRY_RUN_PLACEHOLDERS), *DRY_RUN_FLAGS]
        args += ["--output-manifest-file", str(manifest)]
        env = {**os.environ, **DRY_RUN_ENV, "HOME": str(home)}
        proc = subprocess.run(
            args, cwd=scratch, env=env, capture_output=True, text=True, timeout=300
        )
        if proc.returncode != 0 or not manifest.exists():
            raise XpkError(
                f"xpk's dry run failed (exit {proc.returncode}): {shlex.join(args)}\n"
                f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
            )
        return manifest.read_text()


def submit(xpk: str, workload: Workload) -> int:
    """Runs ``xpk workload create`` for real, its output on this terminal; returns its code."""
    return subprocess.run([xpk, *workload.create_args()], check=False).returncode


def shell_command(workload: Workload, xpk: str = "xpk") -> str:
    """The submission as one shell line; a missing cluster becomes ``$CLUSTER``.

    A missing project or zone is left out: xpk then takes gcloud's configured ones.
    """
    args = [xpk, *workload.create_args({"cluster": "$CLUSTER"})]
    return " ".join(a if a == "$CLUSTER" else shlex.quote(a) for a in args)
