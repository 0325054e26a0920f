"""``python -m xlafw.launch``: launch an experiment on TPU pod slices through xpk (GKE JobSet).

Write the manifest and the commands, submit nothing (no network, no cluster):

    python -m xlafw.launch --fdl_config=llama_8b --target=v5p-256 --num_slices=2 \\
        --image=REGISTRY/xlafw:1 --workload=llama8b-run1 \\
        --fdl_set=trainer.run_dir=gs://BUCKET/runs/llama8b-run1 --manifest=llama8b.yaml

Submit (writes config.json and its hash into the run directory, then runs xpk):

    python -m xlafw.launch --fdl_config=llama_8b --target=v5p-256 --num_slices=2 \\
        --image=REGISTRY/xlafw:1 --workload=llama8b-run1 \\
        --fdl_set=trainer.run_dir=gs://BUCKET/runs/llama8b-run1 \\
        --cluster=CLUSTER --project=PROJECT --zone=ZONE --env=HF_TOKEN=hf_...

The experiment flags are xlafw.main's (``--fdl_config``, ``--fdl_config_file``,
``--fiddler``, ``--fdl_set``/``--fdl.PATH=VALUE``). Everything is checked
before anything is written or submitted: the config against the slices (mesh,
batch per host, memory per chip as ``--dry_run`` estimates it), the workload
name, ``--env`` and a ``gs://`` ``trainer.run_dir``; every problem is listed
and the exit status is 2. xpk's JobSet is then checked (replicas, pods per
slice, topology, chips per pod, environment, restart on exit 42) before it is
written or submitted. Every pod runs

    python -m xlafw.main --fdl_config_file=RUN_DIR/config.json --expect_config_hash=HASH

so no host can run another config. Exit status: 0 written/submitted, 1 xpk or
its manifest failed, 2 a problem in the request (nothing written).
"""

from __future__ import annotations

import sys

from absl import app, flags
from fiddle import absl_flags as fdl_flags  # registers --fdl_config, --fdl_set, ...

from xlafw.config import ConfigError, build_config
from xlafw.exit_codes import ExitCode
from xlafw.launch import checks, xpk
from xlafw.launch.launcher import (
    PodRequest,
    Prepared,
    prepare,
    submit_commands,
    write_manifest,
    write_run_files,
)
from xlafw.launch.manifest import Expected, ManifestError, check_manifest

FLAGS = flags.FLAGS
_TARGET = flags.DEFINE_string(
    "target", None, "TPU slice type of each slice: v4-N, v5e-N (v5litepod-N), v5p-N, v6e-N."
)
_NUM_SLICES = flags.DEFINE_integer(
    "num_slices", 1, "How many slices (multislice over the data-center network)."
)
_IMAGE = flags.DEFINE_string(
    "image", "", "Container image every pod runs (make image IMAGE=...; see Dockerfile)."
)
_WORKLOAD = flags.DEFINE_string(
    "workload", None, "JobSet name: lower-case letters, digits, dashes; at most 40 characters."
)
_CLUSTER = flags.DEFINE_string("cluster", None, "GKE cluster (required to submit).")
_PROJECT = flags.DEFINE_string("project", None, "Google Cloud project (default: gcloud's).")
_ZONE = flags.DEFINE_string("zone", None, "The cluster's zone (default: gcloud's).")
_ENV = flags.DEFINE_multi_string(
    "env", [], "KEY=VALUE for the container (repeatable), e.g. HF_TOKEN, LIBTPU_INIT_ARGS."
)
_MAX_RESTARTS = flags.DEFINE_integer(
    "max_restarts",
    10,
    "How many times the JobSet restarts after a restartable exit (42: preempted after a "
    "checkpoint); every restart resumes from the newest checkpoint.",
)
_MANIFEST = flags.DEFINE_string(
    "manifest",
    None,
    "Write the JobSet manifest here, the config and a submit script beside it; submit "
    "nothing and touch no network.",
)


def _request() -> PodRequest:
    return PodRequest(
        target=_TARGET.value or "",
        num_slices=_NUM_SLICES.value,
        image=_IMAGE.value,
        workload=_WORKLOAD.value or "",
        env=tuple(_ENV.value),
        max_restarts=_MAX_RESTARTS.value,
        cluster=_CLUSTER.value,
        project=_PROJECT.value,
        zone=_ZONE.value,
        submit=not _MANIFEST.value,
    )


def _prepare() -> Prepared:
    """Everything that can exit 2: the request, the config, the tools."""
    problems = checks.manifest_problems(_MANIFEST.value) if _MANIFEST.value else []
    try:
        prepared = prepare(
            _request(),
            lambda: build_config(
                FLAGS.fdl_config, FLAGS.fdl_config_file, FLAGS.fiddler or (), FLAGS.fdl_set or ()
            ),
        )
    except ConfigError as e:
        raise ConfigError(problems + e.problems) from None
    if problems:
        raise ConfigError(problems)
    if not _MANIFEST.value:
        xpk.check_submit_tools()
    return prepared


def _checked_manifest(xpk_path: str, prepared: Prepared) -> str:
    text = xpk.dry_run(xpk_path, prepared.workload)
    w = prepared.workload
    expected = Expected(w.name, w.slice_type, w.num_slices, w.command, w.env, w.max_restarts)
    print(check_manifest(text, expected))
    return text


def _write_manifest(prepared: Prepared, manifest: str) -> int:
    argv = ["python", "-m", "xlafw.launch", *sys.argv[1:]]
    manifest_file, config_file, script = write_manifest(prepared, manifest, _MANIFEST.value, argv)
    print(f"wrote {manifest_file}, {config_file} and {script} (nothing submitted)")
    print(f"to submit, run {script}, or:")
    if prepared.workload.cluster is None:
        print("  CLUSTER=...  # your GKE cluster")
    for command in submit_commands(prepared, str(config_file)):
        print(f"  {command}")
    return ExitCode.OK


def _submit(prepared: Prepared, manifest: str, xpk_path: str) -> int:
    try:
        for path in write_run_files(prepared, manifest):
            print(f"wrote {path}")
    except OSError as e:
        print(
            f"error: cannot write to trainer.run_dir={prepared.run_dir} ({e}); nothing "
            f"submitted. Fix: check that the bucket exists and that `gcloud auth "
            f"application-default login` gives access to it.",
            file=sys.stderr,
        )
        return ExitCode.ERROR
    code = xpk.submit(xpk_path, prepared.workload)
    if code != 0:
        print(f"error: xpk workload create exited {code}", file=sys.stderr)
        return ExitCode.ERROR
    return ExitCode.OK


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected positional arguments: {argv[1:]}")
    try:
        prepared = _prepare()
        xpk_path = xpk.find_xpk()
    except ConfigError as e:
        print(e, file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    except xpk.MissingTool as e:
        print(f"error: {e}", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    w = prepared.workload
    print(
        f"{w.name}: {prepared.cfg.name} on {w.num_slices} x {w.slice_type.name} "
        f"({w.num_slices * w.slice_type.chips} chips, {w.num_slices * w.slice_type.hosts} "
        f"hosts), config_hash {prepared.digest}"
    )
    for note in prepared.notes:
        print(note)
    try:
        manifest = _checked_manifest(xpk_path, prepared)
    except (xpk.XpkError, ManifestError) as e:
        print(f"error: xpk's JobSet is not what was asked; nothing written:\n{e}", file=sys.stderr)
        return ExitCode.ERROR
    if _MANIFEST.value:
        return _write_manifest(prepared, manifest)
    return _submit(prepared, manifest, xpk_path)


def run() -> None:
    app.run(main, flags_parser=fdl_flags.flags_parser)


if __name__ == "__main__":
    run()
