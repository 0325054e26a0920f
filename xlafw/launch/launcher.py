"""From an experiment config and a pod request to a checked JobSet, written or submitted.

``prepare`` validates everything and reports every problem at once (a
``ConfigError``) before anything is written. ``write_manifest`` writes the
checked manifest, the config and a submit script next to each other and
touches no network; ``write_run_files`` puts the config and its hash into the
run directory (``gs://``) that every pod reads before xpk submits.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path

import fiddle as fdl
from fiddle.experimental import serialization

from xlafw import storage
from xlafw.config.errors import ConfigError
from xlafw.config.hardware import Devices
from xlafw.config.provenance import config_hash
from xlafw.config.validation import validate
from xlafw.launch import checks
from xlafw.launch.slices import SliceType, slice_type
from xlafw.launch.xpk import Workload, shell_command

# The launcher's own container environment: torch_xla on the TPU backend
# (xlafw defaults to CPU when PJRT_DEVICE is unset).
POD_ENV = {"PJRT_DEVICE": "TPU"}


@dataclasses.dataclass(frozen=True)
class PodRequest:
    """The pod side of a launch, as the flags give it (see ``xlafw.launch``).

    Attributes:
      submit: submit through xpk (needs ``cluster``); False only writes the manifest.
    """

    target: str
    num_slices: int
    image: str
    workload: str
    env: Sequence[str] = ()
    max_restarts: int = 10
    cluster: str | None = None
    project: str | None = None
    zone: str | None = None
    submit: bool = False


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A validated launch.

    Attributes:
      cfg: the experiment config every host runs.
      digest: its ``config_hash``.
      run_dir: the run directory (``gs://``), where pods read ``config.json``.
      workload: what xpk is asked for.
      notes: advice that does not stop the launch.
    """

    cfg: fdl.Config
    digest: str
    run_dir: str
    workload: Workload
    notes: tuple[str, ...]

    @property
    def config_file(self) -> str:
        return f"{self.run_dir}/config.json"


def container_command(config_file: str, digest: str) -> str:
    """What every pod runs: the written config, refused unless it hashes to ``digest``."""
    return (
        f"python -m xlafw.main --fdl_config_file={shlex.quote(config_file)} "
        f"--expect_config_hash={digest}"
    )


def _request_problems(request: PodRequest) -> tuple[SliceType | None, dict[str, str], list[str]]:
    problems: list[str] = []
    slice_ = None
    if not request.target:
        problems.append("--target is required: the slice type, as in --target=v5p-256.")
    else:
        try:
            slice_ = slice_type(request.target)
        except ConfigError as e:
            problems += e.problems
    if request.submit and not request.cluster:
        problems.append(
            "--cluster is required to submit. Fix: --cluster=NAME, or --manifest=PATH to only "
            "write the manifest and the commands."
        )
    if request.num_slices < 1:
        problems.append(f"--num_slices={request.num_slices}: must be >= 1.")
    if request.max_restarts < 0:
        problems.append(f"--max_restarts={request.max_restarts}: must be >= 0.")
    if not request.image.strip():
        problems.append(
            "--image is required: the container image every pod runs. Fix: build one with "
            "`make image IMAGE=REGISTRY/xlafw:TAG`, push it, and pass --image=REGISTRY/xlafw:TAG."
        )
    problems += checks.workload_problems(request.workload)
    env, env_problems = checks.parse_env(request.env)
    return slice_, env, problems + env_problems


def prepare(request: PodRequest, build: Callable[[], fdl.Config]) -> Prepared:
    """Builds and checks the config against the slices, and the request itself.

    Args:
      request: the pod side of the launch.
      build: builds the experiment config from the command line.

    Raises:
      ConfigError: every problem found, with its fix.
    """
    slice_, env, problems = _request_problems(request)
    try:
        cfg = build()
    except ConfigError as e:
        raise ConfigError(problems + e.problems) from None
    advice: tuple[str, ...] = ()
    try:
        if slice_ is not None and request.num_slices >= 1:
            advice = validate(cfg, target=request.target, num_slices=request.num_slices).advice
        else:  # the slices are not known: check the config on its own
            validate(cfg, purpose="plan", devices=Devices("the requested slices", count=None))
    except ConfigError as e:
        problems += e.problems
    if slice_ is not None and request.num_slices >= 1:
        problems += checks.host_batch_problems(cfg, slice_, request.num_slices)
    try:
        run_dir = str(cfg.trainer.run_dir).format(experiment=cfg.name).rstrip("/")
        checkpoint_dir = str(cfg.checkpoint.directory).format(run_dir=run_dir)
    except (KeyError, IndexError, ValueError, AttributeError):  # a bad template
        if not problems:
            problems.append(
                f"trainer.run_dir={cfg.trainer.run_dir!r} or checkpoint.directory="
                f"{cfg.checkpoint.directory!r} is not a valid template. Fix: use only "
                f"{{experiment}} and {{run_dir}} placeholders."
            )
        raise ConfigError(problems) from None
    hosts = slice_.hosts * request.num_slices if slice_ is not None else 0
    problems += checks.run_dir_problems(run_dir, hosts)
    problems += checks.checkpoint_dir_problems(checkpoint_dir)
    if problems:
        raise ConfigError(problems)
    assert slice_ is not None  # no problems: the target resolved
    digest = config_hash(cfg)
    workload = Workload(
        name=request.workload,
        slice_type=slice_,
        num_slices=request.num_slices,
        image=request.image,
        command=container_command(f"{run_dir}/config.json", digest),
        env={**POD_ENV, **env},
        max_restarts=request.max_restarts,
        cluster=request.cluster,
        project=request.project,
        zone=request.zone,
    )
    note = checks.flat_mesh_note(cfg, request.num_slices)
    return Prepared(cfg, digest, run_dir, workload, ((note,) if note else ()) + advice)


def config_json(cfg: fdl.Config) -> str:
    """The config as ``write_run_files`` saves it: Fiddle JSON, reloadable and same-hashed."""
    return serialization.dump_json(cfg, indent=2) + "\n"


def submit_commands(prepared: Prepared, config_path: str) -> list[str]:
    """The commands that submit a written manifest: copy the config and its hash, then xpk."""
    return [
        f"gcloud storage cp {shlex.quote(config_path)} {shlex.quote(prepared.config_file)}",
        f"echo {prepared.digest} | gcloud storage cp - "
        f"{shlex.quote(prepared.run_dir + '/config_hash.txt')}",
        shell_command(prepared.workload),
    ]


def submit_script(prepared: Prepared, config_name: str, argv: Sequence[str]) -> str:
    """``submit_commands`` as a script that runs from its own directory."""
    lines = [
        "#!/usr/bin/env bash",
        f"# Written by: {shlex.join(argv)}",
        f"# config_hash {prepared.digest}: every pod refuses another config.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
    ]
    if prepared.workload.cluster is None:
        lines.append(': "${CLUSTER:?set CLUSTER to the GKE cluster name}"')
    return "\n".join(lines + submit_commands(prepared, config_name)) + "\n"


def write_manifest(
    prepared: Prepared, manifest_text: str, path: str, argv: Sequence[str]
) -> list[Path]:
    """Writes the manifest, ``<stem>.config.json`` and ``<stem>.submit.sh``; returns their paths.

    Local files only: nothing is copied to the run directory or submitted.
    """
    manifest = Path(path)
    config = manifest.with_suffix(".config.json")
    script = manifest.with_suffix(".submit.sh")
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(manifest_text)
    config.write_text(config_json(prepared.cfg))
    script.write_text(submit_script(prepared, config.name, argv))
    script.chmod(0o755)
    return [manifest, config, script]


def write_run_files(prepared: Prepared, manifest_text: str) -> list[str]:
    """Writes ``config.json``, ``config_hash.txt`` and ``jobset.yaml`` into the run directory.

    Goes through ``xlafw.storage`` (``etils.epath``), so a ``gs://`` run directory works.
    """
    files = {
        "config.json": config_json(prepared.cfg),
        "config_hash.txt": prepared.digest + "\n",
        "jobset.yaml": manifest_text,
    }
    for name, text in files.items():
        storage.write_text(storage.path(prepared.run_dir) / name, text)
    return [f"{prepared.run_dir}/{name}" for name in files]
