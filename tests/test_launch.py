"""Pod launches: the real xpk (dry run, offline) writes the JobSet, the kubernetes client reads it.

Nothing is mocked: xpk runs from its own environment (``$XLAFW_XPK``, set by
``make test``) with a scratch HOME, and every pod template is deserialized by
the ``kubernetes`` client. One CLI launch (the issue's check) is shared by the
tests that read its manifest.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from kubernetes.client import V1JobTemplateSpec

from tests.conftest import ROOT
from xlafw.config import ConfigError, build_config, config_hash, load_config_file, validate
from xlafw.launch import checks, xpk
from xlafw.launch.launcher import PodRequest, prepare, write_run_files
from xlafw.launch.manifest import Expected, ManifestError, check_manifest, job_template, restarts_on
from xlafw.launch.slices import SLICE_TYPES, slice_type

RUN_DIR = "gs://bucket/runs/a"
CHECK_FLAGS = (
    "--fdl_config=llama_8b",
    "--target=v5p-256",
    "--num_slices=2",
    "--image=example/xlafw:1",
    "--workload=llama8b-test",
    f"--fdl_set=trainer.run_dir={RUN_DIR}",
)


def _python(module: str, *args: str, cwd: Path = ROOT, env: dict | None = None):
    """``python -m MODULE ARGS`` with the repository importable from any directory."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def issue_check(tmp_path_factory):
    """The issue's check command, run once: (process, wall seconds, output directory)."""
    out = tmp_path_factory.mktemp("launch")
    start = time.monotonic()
    proc = _python("xlafw.launch", *CHECK_FLAGS, "--manifest=out.yaml", cwd=out)
    return proc, time.monotonic() - start, out


@pytest.fixture(scope="module")
def jobset(issue_check):
    proc, _, out = issue_check
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return yaml.safe_load((out / "out.yaml").read_text())


def _command_hash(jobset) -> str:
    template = job_template(jobset["spec"]["replicatedJobs"][0]["template"])
    command = "\n".join(template.spec.template.spec.containers[0].command)
    return re.search(r"--expect_config_hash=([0-9a-f]{64})", command).group(1)


def test_issue_check_exits_0_in_under_30_seconds_and_writes_manifest_config_and_script(
    issue_check,
):
    proc, seconds, out = issue_check
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert seconds < 30
    assert sorted(p.name for p in out.iterdir()) == [
        "out.config.json",
        "out.submit.sh",
        "out.yaml",
    ]
    assert "nothing submitted" in proc.stdout


def test_jobset_has_one_replica_of_32_pods_per_v5p_256_slice(jobset):
    assert jobset["apiVersion"].startswith("jobset.x-k8s.io/")
    assert jobset["kind"] == "JobSet"
    jobs = jobset["spec"]["replicatedJobs"]
    assert sum(job["replicas"] for job in jobs) == 2
    for job in jobs:
        template = job_template(job["template"])
        assert isinstance(template, V1JobTemplateSpec)
        assert template.spec.parallelism == template.spec.completions == 32
        pod = template.spec.template.spec
        assert pod.node_selector["cloud.google.com/gke-tpu-topology"] == "4x4x8"
        assert pod.node_selector["cloud.google.com/gke-tpu-accelerator"] == "tpu-v5p-slice"
        assert pod.containers[0].resources.limits["google.com/tpu"] == "4"
        assert {e.name: e.value for e in pod.containers[0].env}["PJRT_DEVICE"] == "TPU"


def test_jobset_restarts_on_exit_42_only_up_to_max_restarts(jobset):
    assert jobset["spec"]["failurePolicy"]["maxRestarts"] == 10
    spec = job_template(jobset["spec"]["replicatedJobs"][0]["template"]).spec
    assert restarts_on(spec, 42)
    for code in (1, 2, 3):  # error, config error, non-finite loss
        assert not restarts_on(spec, code)


def test_container_command_carries_the_hash_print_config_prints(jobset):
    printed = _python("xlafw.main", *CHECK_FLAGS[:1], CHECK_FLAGS[-1], "--print_config")
    assert printed.returncode == 0, printed.stderr
    expected = re.search(r"# config_hash: (\w+)", printed.stdout).group(1)
    assert _command_hash(jobset) == expected
    template = job_template(jobset["spec"]["replicatedJobs"][0]["template"])
    command = "\n".join(template.spec.template.spec.containers[0].command)
    assert f"python -m xlafw.main --fdl_config_file={RUN_DIR}/config.json" in command


def test_written_config_reloads_to_the_command_hash(issue_check, jobset):
    _, _, out = issue_check
    assert config_hash(load_config_file(str(out / "out.config.json"))) == _command_hash(jobset)


def test_submit_script_copies_the_config_then_runs_xpk_without_dry_run(issue_check):
    _, _, out = issue_check
    lines = (out / "out.submit.sh").read_text().splitlines()
    copy = next(i for i, line in enumerate(lines) if line.startswith("gcloud storage cp out."))
    create = next(i for i, line in enumerate(lines) if line.startswith("xpk workload create"))
    assert copy < create
    assert f"{RUN_DIR}/config.json" in lines[copy]
    assert "--dry-run" not in lines[create] and "--cluster $CLUSTER" in lines[create]


@pytest.mark.parametrize(
    "override, field",
    [
        ("--fdl_set=mesh.ici.fsdp=96", "mesh"),  # 96 chips cannot cover 2 x 128
        ("--workload=" + "a" * 45, "--workload"),
        ("--fdl_set=trainer.run_dir=runs/a", "trainer.run_dir"),
        ("--fdl_set=checkpoint.directory=/tmp/ckpt", "checkpoint.directory"),
    ],
)
def test_bad_launch_exits_2_naming_the_field_and_writes_nothing(tmp_path, override, field):
    proc = _python("xlafw.launch", *CHECK_FLAGS, override, "--manifest=out.yaml", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{field}" in proc.stderr and "Fix:" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


# One size of each generation: values from the Cloud TPU and GKE tables (BUILD_NOTES.md).
@pytest.mark.parametrize(
    "target, hosts, topology, chips_per_host, accelerator",
    [
        ("v4-128", 16, "4x4x4", 4, "tpu-v4-podslice"),
        ("v5e-32", 8, "4x8", 4, "tpu-v5-lite-podslice"),
        ("v5p-128", 16, "4x4x4", 4, "tpu-v5p-slice"),
        ("v6e-64", 16, "8x8", 4, "tpu-v6e-slice"),
    ],
)
def test_xpk_manifest_matches_the_slice_table(target, hosts, topology, chips_per_host, accelerator):
    slice_ = slice_type(target)
    assert (slice_.hosts, slice_.topology, slice_.chips_per_host, slice_.accelerator) == (
        hosts,
        topology,
        chips_per_host,
        accelerator,
    )
    workload = xpk.Workload(
        name="t1",
        slice_type=slice_,
        num_slices=3,
        image="example/xlafw:1",
        command="python -m xlafw.main --fdl_config_file=gs://b/c.json --expect_config_hash=0",
        env={"PJRT_DEVICE": "TPU", "LIBTPU_INIT_ARGS": "--xla_tpu_enable_async_all_gather=true"},
        max_restarts=4,
    )
    text = xpk.dry_run(xpk.find_xpk(), workload)
    expected = Expected("t1", slice_, 3, workload.command, workload.env, 4)
    assert f"{hosts} pods" in check_manifest(text, expected)
    doc = yaml.safe_load(text)
    assert sum(job["replicas"] for job in doc["spec"]["replicatedJobs"]) == 3


def test_slice_table_matches_xpks_own_system_characteristics():
    shebang = Path(xpk.find_xpk()).read_text().splitlines()[0]
    xpk_python = shebang.removeprefix("#!").strip()
    names = [s.xpk_name for s in SLICE_TYPES.values()]
    script = (
        "import json, sys\n"
        "from xpk.core.system_characteristics import UserFacingNameToSystemCharacteristics as T\n"
        "print(json.dumps({n: [T[n].topology, T[n].vms_per_slice, T[n].chips_per_vm,"
        " T[n].gke_accelerator] for n in json.loads(sys.argv[1])}))"
    )
    proc = subprocess.run(
        [xpk_python, "-c", script, json.dumps(names)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    theirs = json.loads(proc.stdout)
    for s in SLICE_TYPES.values():
        assert theirs[s.xpk_name] == [s.topology, s.hosts, s.chips_per_host, s.accelerator], s


def test_manifest_check_refuses_a_pod_template_the_kubernetes_client_rejects(jobset):
    broken = json.loads(json.dumps(jobset))
    pod = broken["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    del pod["containers"][0]["name"]
    with pytest.raises(ManifestError, match="kubernetes client refuses"):
        check_manifest(yaml.safe_dump(broken), _expected_for_issue_check(jobset))


def test_manifest_check_names_a_wrong_topology(jobset):
    wrong = json.loads(json.dumps(jobset))
    pod = wrong["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    pod["nodeSelector"]["cloud.google.com/gke-tpu-topology"] = "8x8x8"
    with pytest.raises(ManifestError, match="gke-tpu-topology=8x8x8, not 4x4x8"):
        check_manifest(yaml.safe_dump(wrong), _expected_for_issue_check(jobset))


def _expected_for_issue_check(jobset) -> Expected:
    command = (
        f"python -m xlafw.main --fdl_config_file={RUN_DIR}/config.json "
        f"--expect_config_hash={_command_hash(jobset)}"
    )
    return Expected("llama8b-test", slice_type("v5p-256"), 2, command, {"PJRT_DEVICE": "TPU"}, 10)


def test_host_reads_the_config_from_gs_and_refuses_another_hash(gcs_server):
    fs = gcs_server.filesystem()
    bucket = RUN_DIR.removeprefix("gs://").split("/")[0]
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    request = PodRequest(
        target="v5p-256", num_slices=2, image="example/xlafw:1", workload="llama8b-test"
    )
    sets = [f"trainer.run_dir={RUN_DIR}"]
    prepared = prepare(request, lambda: build_config("llama_8b", sets=sets))
    write_run_files(prepared, "kind: JobSet\n")
    flags = [f"--fdl_config_file={RUN_DIR}/config.json", "--print_config"]
    env = gcs_server.env
    same = _python("xlafw.main", *flags, f"--expect_config_hash={prepared.digest}", env=env)
    other = _python("xlafw.main", *flags, "--expect_config_hash=" + "0" * 64, env=env)
    assert same.returncode == 0, same.stderr
    assert f"# config_hash: {prepared.digest}" in same.stdout
    assert other.returncode == 2
    assert prepared.digest in other.stderr and "Fix:" in other.stderr
    assert "XLA runtime" not in other.stdout + other.stderr


def test_the_plans_advice_reaches_the_launch_notes():
    request = PodRequest(target="v5p-256", num_slices=1, image="example/xlafw:1", workload="moe")
    sets = ["trainer.run_dir=gs://bucket/runs/moe", "model.config.moe_kernel=gather"]
    prepared = prepare(request, lambda: build_config("mixtral_8x7b", sets=sets))
    assert any("moe_kernel=gather on a mesh with 128 batch-parallel" in n for n in prepared.notes)
    einsum = prepare(request, lambda: build_config("mixtral_8x7b", sets=sets[:1]))
    assert not any("moe_kernel" in note for note in einsum.notes)


def test_workload_names_follow_gke_rules():
    assert checks.workload_problems("a" * 40) == []
    assert checks.workload_problems("llama8b-run1") == []
    for bad in ("a" * 41, "Llama", "8b-run", "run-", "run_1", ""):
        assert checks.workload_problems(bad), bad


def test_env_needs_key_value_and_values_xpk_can_quote():
    env, problems = checks.parse_env(["HF_TOKEN=hf_x", "LIBTPU_INIT_ARGS=--a=1 --b=2"])
    assert env == {"HF_TOKEN": "hf_x", "LIBTPU_INIT_ARGS": "--a=1 --b=2"} and problems == []
    for bad in ("NOVALUE", "1X=a", 'Q=say "hi"', "PJRT_DEVICE=CPU"):
        assert checks.parse_env([bad])[1], bad


def test_v5e_and_v5litepod_name_the_same_slice():
    assert slice_type("v5e-16") == slice_type("v5litepod-16")
    assert slice_type("v5e-16").xpk_name == "v5litepod-16"
    with pytest.raises(ConfigError, match="v5p-8, v5p-16"):
        slice_type("v5p-24")


def test_dcn_axes_must_multiply_to_the_slice_count():
    cfg = build_config("llama_8b", sets=["mesh.dcn.data=4"])
    with pytest.raises(ConfigError, match="spans 4 slices but --num_slices=2"):
        validate(cfg, target="v5p-256", num_slices=2, purpose="plan")
    validate(build_config("llama_8b", sets=["mesh.dcn.data=2"]), target="v5p-256", num_slices=2)


def test_missing_xpk_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("XLAFW_XPK", str(tmp_path / "no-xpk"))
    with pytest.raises(xpk.MissingTool, match="make env"):
        xpk.find_xpk()
    monkeypatch.delenv("XLAFW_XPK")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(xpk.MissingTool, match=r"requirements-xpk\.txt"):
        xpk.find_xpk()
    with pytest.raises(xpk.MissingTool, match="kubectl and gcloud not found"):
        xpk.check_submit_tools()


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        spec = line.split("#")[0].strip()
        if "==" in spec:
            package, version = spec.split("==")
            pins[package.lower()] = version
    return pins


def test_dockerfile_installs_exactly_the_pinned_requirements_plus_the_tpu_extra():
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    installs = [shlex.split(m) for m in re.findall(r"pip install ([^&\n]+)", text)]
    files, specs = {}, []
    for args in installs:
        assert not {"-U", "--upgrade"} & set(args), args
        for i, arg in enumerate(args):
            if arg == "-r":
                files[args[i + 1]] = "--no-deps" in args
            elif not arg.startswith("-") and args[i - 1] != "-r":
                specs.append(arg)
    # The same files, installed the way `make env` installs them.
    assert files == {"requirements.txt": False, "requirements-nodeps.txt": True}
    assert "COPY requirements.txt requirements-nodeps.txt ./" in text
    pins = _pins("requirements.txt")
    for spec in specs:  # anything named beyond the files is pinned exactly as they pin it
        match = re.fullmatch(r"([\w-]+)(\[[\w,]+\])?==([\w.]+)", spec)
        assert match and pins[match.group(1).lower()] == match.group(3), spec
    assert "torch_xla[tpu]==" + pins["torch_xla"] in specs
    # torch_xla's tpu extra pins libtpu exactly, so the image's TPU runtime is fixed too.
    extra = importlib.metadata.requires("torch_xla")
    assert any(re.match(r"libtpu==[\d.]+; extra == .tpu.", r) for r in extra), extra


def test_every_launch_problem_is_reported_at_once():
    request = PodRequest(
        target="v5p-24", num_slices=2, image="", workload="Llama_8B", env=("FOO",), submit=True
    )
    with pytest.raises(ConfigError) as error:
        prepare(request, lambda: build_config("llama_8b", sets=["trainer.max_stepz=3"]))
    problems = "\n".join(error.value.problems)
    for field in ("--target=v5p-24", "--cluster", "--image", "--workload", "--env", "max_stepz"):
        assert field in problems, field
