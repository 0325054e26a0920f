"""Checkpoints: atomic writes, exact resume, preemption, config drift, faults."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import ROOT, SMALL_MODEL

from xlafw.exit_codes import ExitCode

BASE = (
    "--fdl_config=llama_tiny_smoke",
    "--fdl.trainer.log_every=1",
    "--fdl.checkpoint.every_steps=4",
    "--fdl.eval.every_steps=0",  # one graph per run; eval across resumes: test_run_features
)


def _cmd(run_dir, *extra):
    return [sys.executable, "-m", "xlafw.main", *BASE, f"--fdl.trainer.run_dir={run_dir}", *extra]


def _metrics(run_dir):
    with open(run_dir / "metrics.jsonl") as f:
        return [r for r in map(json.loads, f) if "loss" in r]  # training steps, not evals


def _committed(run_dir):
    ckpt = run_dir / "checkpoints"
    return sorted(int(p.name[5:]) for p in ckpt.glob("step_*") if (p / "COMMITTED").exists())


def _run(args):
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """30 uninterrupted steps with synchronous checkpoints: the losses to reproduce."""
    run_dir = tmp_path_factory.mktemp("straight")
    proc = _run(_cmd(run_dir, "--fdl.trainer.max_steps=30"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {r["step"]: r["loss"] for r in _metrics(run_dir)}


def test_sigkill_during_an_async_checkpoint_write_then_resume_is_bit_identical(
    tmp_path, straight_run
):
    # Async saves write in a background thread while later steps run; the
    # losses must still equal the synchronous run's, before and after the kill.
    args = ("--fdl.trainer.max_steps=30", "--fdl.checkpoint.async_save=true")
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _cmd(killed, *args), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    partial = killed / "checkpoints" / "step_00000012"
    deadline = time.monotonic() + 300
    while not partial.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert partial.exists() and not (partial / "COMMITTED").exists(), (
        "the kill did not land during the step-12 write"
    )
    assert _committed(killed) == [4, 8]  # the newest valid checkpoint is untouched
    before = [r for r in _metrics(killed) if r["step"] <= 8]
    assert all(r["loss"] == straight_run[r["step"]] for r in before)

    resumed = _run(_cmd(killed, *args))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "step_00000008" in resumed.stdout
    assert "removing uncommitted checkpoint" in resumed.stdout
    assert _committed(killed) == [28, 30]
    after = [r for r in _metrics(killed) if r["step"] > 8][-22:]
    assert [r["step"] for r in after] == list(range(9, 31))
    assert all(r["loss"] == straight_run[r["step"]] for r in after), [
        (r["step"], r["loss"], straight_run[r["step"]]) for r in after
    ]
    assert after[-1]["compiles"] == after[1]["compiles"]  # no recompilation after resume


def test_a_run_in_a_bucket_survives_sigkills_with_bit_identical_losses(
    gcs_server, gcs_bucket, straight_run
):
    run_dir, env = f"{gcs_bucket}/run", {**os.environ, **gcs_server.env}
    fs, ckpt = gcs_server.filesystem(), f"{gcs_bucket[5:]}/run/checkpoints"
    args = _cmd(run_dir, "--fdl.trainer.max_steps=30")
    quiet = {"cwd": ROOT, "env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}

    # Killed during the step-12 save: its objects are being written, its marker is not.
    proc = subprocess.Popen(args, **quiet)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if fs.exists(f"{ckpt}/step_00000012"):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not fs.exists(f"{ckpt}/step_00000012/COMMITTED")
    assert fs.exists(f"{ckpt}/step_00000008/COMMITTED")

    # Killed at a random moment of the resumed run (start-up, a step or a save).
    delay = random.uniform(2.0, 12.0)
    proc = subprocess.Popen(args, **quiet)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    final = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, f"killed after {delay:.1f} s: {final.stderr[-3000:]}"
    resumed_at = int(re.search(r"resumed from \S+step_(\d+)", final.stdout).group(1))
    lines = fs.cat(f"{run_dir}/metrics.jsonl").splitlines()
    records = [r for r in map(json.loads, lines) if "loss" in r]
    after = [r for r in records if r["step"] > resumed_at][-(30 - resumed_at) :]
    assert [r["step"] for r in after] == list(range(resumed_at + 1, 31))
    assert all(r["loss"] == straight_run[r["step"]] for r in after), f"killed after {delay:.1f} s"
    names = {p.rsplit("/", 1)[1] for p in fs.ls(f"{gcs_bucket}/run")}
    assert {"config.json", "metrics.jsonl", "summary.json", "checkpoints"} <= names
    assert fs.exists(f"{ckpt}/step_00000030/COMMITTED")
    assert not (ROOT / "gs:").exists()  # nothing went to a local directory named like the URL


def test_a_truncated_shard_makes_the_run_resume_from_the_previous_checkpoint(tmp_path):
    assert _run(_cmd(tmp_path, "--fdl.trainer.max_steps=8")).returncode == 0
    shard = tmp_path / "checkpoints" / "step_00000008" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:1000])
    resumed = _run(_cmd(tmp_path, "--fdl.trainer.max_steps=10"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "step_00000008 is damaged (__0_0.distcp has 1000 bytes" in resumed.stdout
    assert "resumed from" in resumed.stdout and "step_00000004 (step 4" in resumed.stdout


def test_sigterm_checkpoints_the_next_step_and_exits_with_the_restart_code(tmp_path):
    proc = subprocess.Popen(
        _cmd(tmp_path, "--fdl.trainer.max_steps=200", "--fdl.checkpoint.every_steps=0"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    metrics = tmp_path / "metrics.jsonl"
    while proc.poll() is None and (
        not metrics.exists() or len(metrics.read_text().splitlines()) < 6
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == ExitCode.PREEMPTED == 42, out[-3000:]
    last_logged = _metrics(tmp_path)[-1]["step"]
    assert 6 <= last_logged < 200
    assert _committed(tmp_path) == [last_logged]
    assert "stopped after step" in out

    finished = _run(_cmd(tmp_path, f"--fdl.trainer.max_steps={last_logged + 2}"))
    assert finished.returncode == ExitCode.OK, finished.stderr[-3000:]
    assert f"step_{last_logged:08d}" in finished.stdout  # resumed from the preemption checkpoint
    again = _run(_cmd(tmp_path, f"--fdl.trainer.max_steps={last_logged + 2}"))
    assert again.returncode == ExitCode.OK and "nothing to train" in again.stdout


def test_resume_refuses_a_changed_config_and_names_the_field(tmp_path):
    assert _run(_cmd(tmp_path, "--fdl.trainer.max_steps=4")).returncode == 0
    changed = _run(_cmd(tmp_path, "--fdl.trainer.max_steps=6", "--fdl.optimizer.lr=0.01"))
    assert changed.returncode != 0
    assert "optimizer.lr: 0.003 -> 0.01" in changed.stderr + changed.stdout
    assert "Traceback" not in changed.stderr
    longer = _run(_cmd(tmp_path, "--fdl.trainer.max_steps=6"))  # more steps: allowed
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert _committed(tmp_path) == [4, 6]


def test_unwritable_checkpoint_directory_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = _run(_cmd(tmp_path, f"--fdl.checkpoint.directory={blocker}/ckpt"))
    assert proc.returncode != 0
    assert "cannot write checkpoints" in proc.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


def test_nan_loss_stops_the_run_naming_the_step_and_keeps_good_checkpoints(tmp_path):
    proc = _run(
        _cmd(
            tmp_path,
            "--fdl.trainer.max_steps=40",
            "--fdl.optimizer.lr=1e30",
            "--fdl.optimizer.update_clip=None",
            "--fdl.trainer.max_grad_norm=None",
        )
    )
    assert proc.returncode == ExitCode.NON_FINITE_LOSS  # a restart would diverge again
    assert (
        "loss is nan at step" in proc.stderr.lower() or "loss is inf at step" in proc.stderr.lower()
    )
    for step in _committed(tmp_path):
        assert (
            json.loads(
                (tmp_path / "checkpoints" / f"step_{step:08d}" / "trainer_state.json").read_text()
            )["step"]
            == step
        )


SPMD_ROUNDTRIP = textwrap.dedent(
    """
    import sys
    import fiddle as fdl, torch, torch_xla
    from xlafw.config import build_config
    from xlafw.trainer import Trainer
    sets = sys.argv[1:]
    cfg = build_config("llama_tiny_spmd", sets=sets)
    first = Trainer(fdl.build(cfg), cfg)
    first.setup()
    batch = {k: v.to(first.rt.device) for k, v in next(iter(first.data)).items()}
    first.train_step(batch)
    torch_xla.sync()
    first._save(1)
    norm = first.model.model.layers[0].input_layernorm.weight
    print("NORM_SPEC", torch_xla._XLAC._get_xla_sharding_spec(norm))
    second = Trainer(fdl.build(cfg), cfg)
    second.setup()  # resumes from the step-1 checkpoint
    a = {k: v.cpu() for k, v in first.model.state_dict().items()}
    b = {k: v.cpu() for k, v in second.model.state_dict().items()}
    assert a.keys() == b.keys()
    print("MODEL_EQUAL", all(torch.equal(a[k], b[k]) for k in a))
    sa = [t.cpu() for s in first.optimizer.state.values() for t in s.values()]
    sb = [t.cpu() for s in second.optimizer.state.values() for t in s.values()]
    print("OPT_EQUAL", len(sa) == len(sb) and all(torch.equal(x, y) for x, y in zip(sa, sb)))
    print("START", second.start_step)
    """
)


def test_sharded_roundtrip_keeps_partially_replicated_tensors_on_a_2d_mesh(tmp_path):
    sets = [
        *(flag.removeprefix("--fdl.") for flag in SMALL_MODEL),
        "data.seq_len=64",
        f"trainer.run_dir={tmp_path}",
    ]
    proc = subprocess.run(
        [sys.executable, "-c", SPMD_ROUNDTRIP, *sets],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "CPU_NUM_DEVICES": "8"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = dict(
        line.split(" ", 1)
        for line in proc.stdout.splitlines()
        if line.isupper() or (" " in line and line.split(" ", 1)[0].isupper())
    )
    # [fsdp] on a 4x2 mesh: split 4 ways, replicated over tensor.
    assert "last_tile_dim_replicate" in out["NORM_SPEC"]
    assert out["MODEL_EQUAL"] == "True" and out["OPT_EQUAL"] == "True"
    assert out["START"] == "1"
