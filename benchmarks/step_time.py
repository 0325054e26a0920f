"""xlafw vs a minimal hand-written torch_xla loop vs eager PyTorch, on llama_tiny.

Run from the repository root on an otherwise idle machine:

    PY=$(make -s python-path); $PY -m benchmarks.step_time --rounds 2

Each round runs xlafw (``python -m xlafw.main --fdl_config=llama_tiny``, 40
steps, logging every 10) and the minimal loop (benchmarks/minimal_loop.py),
alternating, each in a fresh process; then eager PyTorch once. Steady-state
step time is the median of the logging windows after step 10. "Command -> step
1" is wall time from launching the process to the end of step 1 (imports,
config, model, data, compilation). "CPU s/step" is the process's CPU time
(every thread; on XLA's CPU backend the device is the host) from the first
logged step after step 10 to the last, per step (``sharded_step._watch``).
Prints one table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.sharded_step import _watch

TOKENS_PER_STEP = 8 * 256
WARMUP = 10  # steps before the steady state


def run_xlafw(steps: int, dtype: str) -> dict:
    with tempfile.TemporaryDirectory() as run_dir:
        launch = time.time()
        cmd = [
            sys.executable,
            "-m",
            "xlafw.main",
            "--fdl_config=llama_tiny",
            f"--fdl.trainer.max_steps={steps}",
            "--fdl.trainer.log_every=10",
            f"--fdl.trainer.param_dtype={dtype}",
            "--fdl.checkpoint.every_steps=0",
            "--fdl.eval.every_steps=0",
            f"--fdl.trainer.run_dir={run_dir}",
        ]
        metrics = Path(run_dir) / "metrics.jsonl"
        watched = _watch(cmd, dict(os.environ), metrics, WARMUP, steps)
        with open(metrics) as f:
            rows = [r for r in map(json.loads, f) if "loss" in r]
        with open(os.path.join(run_dir, "summary.json")) as f:
            summary = json.load(f)
    return {
        "steady_step_s": statistics.median(r["step_time_s"] for r in rows if r["step"] > WARMUP),
        "cpu_s": watched["cpu_s"],
        "first_step_s": rows[0]["timestamp"] - launch,
        "compiles": summary["compiles"],
        "compile_s": summary["compile_seconds"],
    }


def run_minimal(steps: int, dtype: str, device: str = "xla") -> dict:
    env = {**os.environ, "BENCH_LAUNCH_TIME": str(time.time())}
    with tempfile.TemporaryDirectory() as tmp:
        metrics = Path(tmp) / "metrics.jsonl"
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.minimal_loop",
            f"--device={device}",
            f"--dtype={dtype}",
            f"--steps={steps}",
            f"--metrics={metrics}",
        ]
        watched = _watch(cmd, env, metrics, WARMUP, steps)
    # The loop's result: its last JSON line (stderr is merged into the output).
    lines = watched["output"].splitlines()
    result = json.loads(next(line for line in reversed(lines) if line.startswith("{")))
    return {**result, "cpu_s": watched["cpu_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--no_eager", action="store_true")
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"xlafw": [], "minimal torch_xla loop": []}
    for _ in range(args.rounds):
        results["xlafw"].append(run_xlafw(args.steps, args.dtype))
        results["minimal torch_xla loop"].append(run_minimal(args.steps, args.dtype))
    if not args.no_eager:
        results["eager PyTorch (CPU)"] = [run_minimal(args.steps, args.dtype, "eager")]
    print(
        f"llama_tiny (19.3M params), [8, 256] batches, {args.dtype}, {args.steps} steps, "
        f"{args.rounds} alternating rounds; median of the steady windows"
    )
    print(
        f"{'run':24s} {'s/step':>8s} {'tok/s':>8s} {'compiles':>8s} {'compile s':>9s} "
        f"{'cmd->step 1 s':>13s} {'CPU s/step':>10s}"
    )
    steady = {}
    for name, runs in results.items():
        step = statistics.median(r["steady_step_s"] for r in runs)
        steady[name] = step
        compiles = runs[0].get("compiles", "-")
        compile_s = (
            f"{statistics.median(r['compile_s'] for r in runs):.1f}"
            if "compile_s" in runs[0]
            else "-"
        )
        first = statistics.median(r["first_step_s"] for r in runs)
        cpu = statistics.median(r["cpu_s"] for r in runs)
        print(
            f"{name:24s} {step:8.3f} {TOKENS_PER_STEP / step:8,.0f} {compiles!s:>8s} "
            f"{compile_s:>9s} {first:13.1f} {cpu:10.2f}"
        )
    ratio = steady["xlafw"] / steady["minimal torch_xla loop"]
    per_round = [
        round(a["steady_step_s"] / b["steady_step_s"], 3)
        for a, b in zip(results["xlafw"], results["minimal torch_xla loop"], strict=True)
    ]
    print(f"xlafw / minimal loop step time: {ratio:.3f} (per round: {per_round})")
    cpu_ratio = statistics.median(r["cpu_s"] for r in results["xlafw"]) / statistics.median(
        r["cpu_s"] for r in results["minimal torch_xla loop"]
    )
    per_round = [
        round(a["cpu_s"] / b["cpu_s"], 3)
        for a, b in zip(results["xlafw"], results["minimal torch_xla loop"], strict=True)
    ]
    print(f"xlafw / minimal loop CPU per step: {cpu_ratio:.3f} (per round: {per_round})")


if __name__ == "__main__":
    main()
