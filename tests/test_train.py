"""End-to-end training on the real XLA CPU backend, through the CLI."""

from __future__ import annotations

import itertools
import json

from conftest import SMALL_MODEL


def _metrics(run_dir):
    with open(run_dir / "metrics.jsonl") as f:
        return [r for r in map(json.loads, f) if "loss" in r]  # training steps, not evals


def test_smoke_run_loss_falls_and_step_compiles_once(xlafw_cli, tmp_path):
    proc = xlafw_cli(
        "--fdl_config=experiments.llama_tiny_smoke",
        "--fdl.trainer.max_steps=30",
        "--fdl.trainer.log_every=1",
        "--fdl.eval.every_steps=0",  # the eval graph's compile is test_run_features'
        f"--fdl.trainer.run_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _metrics(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert rows[-1]["loss"] < 0.9 * rows[0]["loss"]
    # Step 1 (no optimizer state yet) and step 2 compile; nothing after, whatever
    # the logging cadence and the warmup+cosine learning rate.
    assert rows[-1]["compiles"] == rows[1]["compiles"]
    lrs = [r["lr"] for r in rows]
    assert lrs[0] < lrs[4] and lrs[-1] < lrs[5]
    assert all(r["tokens_per_s"] > 0 for r in rows)
    # A step's time is completion to completion: it matches the wall clock
    # between consecutive log lines (timestamps are taken after the reads).
    for before, after in itertools.pairwise(rows[5:]):
        wall = after["timestamp"] - before["timestamp"]
        assert abs(after["step_time_s"] - wall) < 0.05 * wall + 0.01, (before, after)


def test_startup_stages_run_in_documented_order(xlafw_cli, tmp_path):
    proc = xlafw_cli(
        "--fdl_config=llama_tiny_smoke", "--fiddler=quick", f"--fdl.trainer.run_dir={tmp_path}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    stages = [
        int(line.split("[startup")[1].split("/")[0])
        for line in proc.stdout.splitlines()
        if "[startup" in line
    ]
    assert stages == list(range(1, 14))
    for name in ("config.json", "config.txt", "argv.txt", "metrics.jsonl"):
        assert (tmp_path / name).exists(), name


def test_saved_config_reloads_to_the_same_config(xlafw_cli, tmp_path):
    proc = xlafw_cli(
        "--fdl_config=llama_tiny_smoke",
        "--fdl.optimizer.lr=1e-3",
        "--fiddler=quick",
        f"--fdl.trainer.run_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = (tmp_path / "config.txt").read_text()
    again = xlafw_cli(f"--fdl_config_file={tmp_path / 'config.json'}", "--print_config")
    assert again.returncode == 0, again.stderr
    printed, _, hash_line = again.stdout.strip().rpartition("\n")
    assert printed.strip() == first.strip()
    assert hash_line == f"# config_hash: {(tmp_path / 'config_hash.txt').read_text().strip()}"


def test_sft_run_with_varying_example_lengths_never_recompiles(xlafw_cli, tmp_path):
    proc = xlafw_cli(
        "--fdl_config=llama_tiny_sft",
        *SMALL_MODEL,
        "--fdl.data.seq_len=128",
        "--fdl.trainer.max_steps=8",
        "--fdl.trainer.log_every=1",
        f"--fdl.trainer.run_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _metrics(tmp_path)
    assert len(rows) == 8
    assert rows[-1]["compiles"] == rows[1]["compiles"]
    assert "recompiled" not in proc.stdout


def test_packed_documents_with_segment_ids_train_without_recompiling(xlafw_cli, tmp_path):
    proc = xlafw_cli(
        "--fdl_config=llama_tiny_smoke",
        "--fdl.data.document_boundaries=segmented",
        "--fdl.trainer.max_steps=6",
        "--fdl.trainer.log_every=1",
        f"--fdl.trainer.run_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _metrics(tmp_path)
    assert rows[-1]["compiles"] == rows[1]["compiles"] and rows[-1]["loss"] < rows[0]["loss"]


def test_small_models_initialize_on_the_host_large_ones_on_the_device():
    import fiddle as fdl

    from xlafw.config import build_config, validate
    from xlafw.trainer import Trainer

    def on_host(name, *sets):
        cfg = build_config(name, sets=list(sets))
        plan = validate(cfg, purpose="plan")  # the parameter count comes from the plan
        return Trainer(fdl.build(cfg), cfg, plan=plan)._init_on_host()[0]

    assert on_host("llama_tiny") and not on_host("llama_8b")
    assert not on_host("llama_tiny", "trainer.init_on=device")
    assert on_host("llama_8b", "trainer.init_on=host")
