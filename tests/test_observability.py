"""Metrics sinks, wandb offline, profiling and the recompilation alarm."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from conftest import ROOT

from xlafw.metrics import best_cpu_matmul_flops


def test_run_writes_jsonl_plot_profile_and_wandb_offline_history(xlafw_cli, tmp_path):
    proc = xlafw_cli(
        "--fdl_config=llama_tiny_smoke",
        "--fdl.trainer.max_steps=8",
        "--fdl.trainer.log_every=2",
        "--fdl.metrics.wandb=offline",
        "--fdl.metrics.profile_steps=(3,4)",
        f"--fdl.trainer.run_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in records if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 4, 6, 8]
    last = rows[-1]
    assert last["update_norm"] > 0 and 0 < last["mfu"] < 1
    assert last["tokens_per_s_per_device"] == last["tokens_per_s"]  # one device
    assert last["tokens_seen"] == 8 * 4 * 64
    assert (tmp_path / "metrics.png").stat().st_size > 10_000
    assert list((tmp_path / "profile").glob("plugins/profile/*/*.xplane.pb"))
    history = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(history) == 1 and b"train/loss" in history[0].read_bytes()


SHAPE_CHANGE = textwrap.dedent(
    """
    import sys
    import fiddle as fdl
    import torch
    from xlafw.config import build_config
    from xlafw.data.pipeline import DataPipeline
    from xlafw.trainer import Trainer, TrainingStopped, setup_logging

    class ShorterAtStep5(DataPipeline):
        '''The real pipeline, but batch 5 is one token shorter: a new shape.'''

        def __iter__(self):
            for number, batch in enumerate(super().__iter__(), start=1):
                if number == 5:
                    batch = {k: v[:, :-1] for k, v in batch.items()}
                yield batch

    setup_logging()
    cfg = build_config("llama_tiny_smoke", sets=sys.argv[1:])
    fdl.update_callable(cfg.data, ShorterAtStep5)
    trainer = Trainer(fdl.build(cfg), cfg)
    trainer.setup()
    try:
        trainer.train()
    except TrainingStopped as e:
        print("STOPPED", e)
    """
)


def _shape_change(tmp_path, *sets):
    return subprocess.run(
        [
            sys.executable,
            "-c",
            SHAPE_CHANGE,
            "trainer.max_steps=7",
            f"trainer.run_dir={tmp_path}",
            *sets,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_shape_change_after_warmup_triggers_the_recompilation_alarm(tmp_path):
    proc = _shape_change(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "XLA recompiled at step 5, after warm-up: input shapes changed" in proc.stdout
    assert "(4, 64)" in proc.stdout and "(4, 63)" in proc.stdout
    assert "step     7/7" in proc.stdout  # warn: training goes on


def test_recompilation_alarm_can_stop_the_run(tmp_path):
    proc = _shape_change(tmp_path, "metrics.on_recompile=error")
    assert "STOPPED XLA recompiled at step 5" in proc.stdout, proc.stdout[-3000:]


def test_cpu_peak_is_the_best_rate_measured_on_this_machine(tmp_path):
    path = str(tmp_path / "cache" / "peak.json")
    assert best_cpu_matmul_flops(100e9, path) == 100e9
    # A probe slowed by other work on the cores does not lower the peak...
    assert best_cpu_matmul_flops(11e9, path) == 100e9
    # ...a faster one raises it, and it is remembered.
    assert best_cpu_matmul_flops(150e9, path) == 150e9
    assert best_cpu_matmul_flops(1.0, path) == 150e9
    for broken in ("not json", "[1, 2]", '{"a": "b"}'):
        (tmp_path / "cache" / "peak.json").write_text(broken)
        assert best_cpu_matmul_flops(42e9, path) == 42e9
    assert not list((tmp_path / "cache").glob("*.tmp"))
