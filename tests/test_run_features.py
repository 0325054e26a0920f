"""Validation loss, gradient accumulation and mixed precision, on the real XLA CPU backend."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT, SMALL_MODEL

SMOKE = ("--fdl_config=llama_tiny_smoke", "--fdl.trainer.log_every=1")


def _records(run_dir) -> tuple[list[dict], list[dict]]:
    """(training steps, evaluations) from a run's metrics file."""
    with open(run_dir / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    return [r for r in records if "loss" in r], [r for r in records if "eval_loss" in r]


def _train(xlafw_cli, run_dir, *flags, env=None):
    proc = xlafw_cli(*SMOKE, f"--fdl.trainer.run_dir={run_dir}", *flags, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _records(run_dir)


WITH_EVAL = (
    "--fdl.trainer.max_steps=30",
    "--fdl.metrics.on_recompile=error",
    "--fdl.checkpoint.every_steps=10",
    "--fdl.checkpoint.keep_last=3",
)


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory):
    """30 smoke steps evaluating every 10 (2 held-out batches), checkpoints at 10, 20, 30."""
    from conftest import run_xlafw

    run_dir = tmp_path_factory.mktemp("with_eval")
    return run_dir, _train(run_xlafw, run_dir, *WITH_EVAL)


@pytest.fixture(scope="module")
def with_eval(eval_run):
    return eval_run[1]


def test_eval_is_logged_at_its_cadence_with_its_perplexity(with_eval):
    _, evals = with_eval
    assert [e["step"] for e in evals] == [10, 20, 30]
    assert all(e["eval_tokens"] == 2 * 4 * 63 for e in evals)  # 2 batches of 4 x 63 targets
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    for e in evals:
        assert e["eval_perplexity"] == pytest.approx(math.exp(e["eval_loss"]), rel=1e-12)


def test_eval_leaves_the_training_losses_bit_identical(xlafw_cli, tmp_path, with_eval):
    steps, _ = with_eval
    plain, evals = _train(
        xlafw_cli, tmp_path, "--fdl.trainer.max_steps=30", "--fdl.eval.every_steps=0"
    )
    assert evals == []
    assert [r["loss"] for r in plain] == [r["loss"] for r in steps]
    # One more compilation, the eval graph, and none after it is warm (on_recompile=error).
    assert steps[-1]["compiles"] == plain[-1]["compiles"] + 1


def test_eval_losses_are_identical_after_a_resume(xlafw_cli, eval_run):
    run_dir, (_, straight) = eval_run
    for step in (20, 30):  # as if the run had stopped after its step-10 checkpoint
        shutil.rmtree(run_dir / "checkpoints" / f"step_{step:08d}")
    proc = xlafw_cli(*SMOKE, f"--fdl.trainer.run_dir={run_dir}", *WITH_EVAL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step_00000010 (step 10" in proc.stdout
    _, evals = _records(run_dir)
    resumed = evals[len(straight) :]
    assert [e["step"] for e in resumed] == [20, 30]
    assert [e["eval_loss"] for e in resumed] == [e["eval_loss"] for e in straight[1:]]


def _relative_gaps(a: list[dict], b: list[dict]) -> list[float]:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    return [abs(x["loss"] - y["loss"]) / abs(x["loss"]) for x, y in zip(a, b, strict=True)]


@pytest.mark.parametrize("experiment", ["llama_tiny_smoke", "llama_tiny_sft"])
def test_four_accumulated_micro_batches_match_the_whole_batch(xlafw_cli, tmp_path, experiment):
    common = (
        f"--fdl_config={experiment}",
        *SMALL_MODEL,
        "--fdl.data.seq_len=64",
        "--fdl.data.global_batch_size=8",
        "--fdl.trainer.max_steps=20",
        "--fdl.trainer.log_every=1",
        "--fdl.eval.every_steps=0",
        "--fdl.metrics.on_recompile=error",  # nothing compiles after step 2
    )
    runs = {}
    for accum in (1, 4):
        run_dir = tmp_path / f"accum{accum}"
        proc = xlafw_cli(
            *common, f"--fdl.trainer.grad_accum_steps={accum}", f"--fdl.trainer.run_dir={run_dir}"
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[accum] = _records(run_dir)[0]
    assert max(_relative_gaps(runs[1], runs[4])) < 1e-5
    assert runs[4][-1]["compiles"] == runs[4][1]["compiles"]


@pytest.mark.parametrize(
    "experiment, batch, width",
    [
        ("llama_tiny_spmd", 16, 172),  # fsdp 4 x tensor 2: 4 micro-batches of 4 rows
        ("llama_tiny_sft", 32, 176),  # fsdp 8, SFT masks: micro-batches hold unequal targets
    ],
)
def test_accumulation_on_8_devices_matches_the_whole_batch(
    xlafw_cli, tmp_path, experiment, batch, width
):
    common = (
        f"--fdl_config={experiment}",
        *SMALL_MODEL,
        f"--fdl.model.config.intermediate_size={width}",  # divisible by the fsdp ways
        "--fdl.data.seq_len=64",
        f"--fdl.data.global_batch_size={batch}",
        "--fdl.trainer.max_steps=20",
        "--fdl.trainer.log_every=1",
        "--fdl.eval.every_steps=0",
        "--fdl.metrics.on_recompile=error",
    )
    runs = {}
    for accum in (1, 4):
        run_dir = tmp_path / f"accum{accum}"
        proc = xlafw_cli(
            *common,
            f"--fdl.trainer.grad_accum_steps={accum}",
            f"--fdl.trainer.run_dir={run_dir}",
            env={"CPU_NUM_DEVICES": "8"},
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[accum] = _records(run_dir)[0]
    assert max(_relative_gaps(runs[1], runs[4])) < 1e-5


def test_accumulation_that_splits_a_micro_batch_unevenly_is_refused(xlafw_cli, tmp_path):
    proc = xlafw_cli(
        "--fdl_config=llama_tiny_spmd",
        "--fdl.trainer.grad_accum_steps=4",  # 8 rows / 4 = 2 rows for 4 fsdp shards
        f"--fdl.trainer.run_dir={tmp_path}",
        env={"CPU_NUM_DEVICES": "8"},
    )
    assert proc.returncode == 2
    assert "trainer.grad_accum_steps x data-parallel ways (4 x 4)" in proc.stderr
    assert "Traceback" not in proc.stderr


MIXED_PRECISION = textwrap.dedent(
    """
    import re, sys
    import fiddle as fdl, torch, torch_xla
    from xlafw.config import build_config
    from xlafw.trainer import Trainer
    cfg = build_config("llama_tiny_smoke", fiddlers=["mixed_precision"], sets=sys.argv[1:])
    trainer = Trainer(fdl.build(cfg), cfg)
    trainer.setup()
    batch = {k: v.to(trainer.rt.device) for k, v in next(iter(trainer.data)).items()}
    with trainer._autocast():
        out = trainer.model(**batch)
    out.loss.backward()
    print("GRADS", sorted({str(p.grad.dtype) for p in trainer.model.parameters()}))
    trainer.optimizer.zero_grad(set_to_none=True)
    loss, _ = trainer.train_step(batch)
    hlo = torch_xla._XLAC._get_xla_tensors_hlo([loss])
    lines = [line for line in hlo.splitlines() if " dot(" in line]
    dots = [line.split(" dot(", 1)[1].split(")", 1)[0] for line in lines]
    operands = {t for args in dots for t in re.findall(r"(\\w+)\\[", args)}
    print("DOT_OPERANDS", sorted(operands), len(dots))
    torch_xla.sync()
    print("PARAMS", sorted({str(p.dtype) for p in trainer.model.parameters()}))
    print("STATE", sorted({str(t.dtype) for s in trainer.optimizer.state.values()
                           for t in s.values() if t.dim() > 0}))
    """
)


def test_mixed_precision_keeps_fp32_weights_and_state_and_runs_bf16_matmuls(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", MIXED_PRECISION, f"trainer.run_dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    keys = ("DOT_OPERANDS", "PARAMS", "STATE", "GRADS")
    out = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.startswith(keys))
    assert out["PARAMS"] == "['torch.float32']"
    assert out["STATE"] == "['torch.float32']"
    assert out["GRADS"] == "['torch.float32']"
    operands, count = out["DOT_OPERANDS"].rsplit(" ", 1)
    assert operands == "['bf16']" and int(count) >= 2 * 7  # every layer's matmuls
