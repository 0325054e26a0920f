"""fp32 vs mixed precision vs pure bf16 on llama_tiny: loss curves, eval loss, step time.

Run from the repository root on an otherwise idle machine (about 25 minutes):

    PY=$(make -s python-path); $PY -m benchmarks.precision_curves --steps 300

Each variant trains llama_tiny for ``--steps`` steps in its own process
(``python -m xlafw.main``, logging every 10 steps, evaluating every 50, no
checkpoints), one after another. Prints a table (final training loss as the
mean of the last 50 steps' logged windows, last eval loss, median step time
after step 20, eval share of the wall time) and draws the three loss curves
into ``--png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

VARIANTS = {
    "fp32": ("trainer.param_dtype=float32", "trainer.compute_dtype=None"),
    "mixed": ("trainer.param_dtype=float32", "trainer.compute_dtype=bfloat16"),
    "bf16": ("trainer.param_dtype=bfloat16", "trainer.compute_dtype=None"),
}


def run(variant: str, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as run_dir:
        sets = [f"--fdl_set={s}" for s in VARIANTS[variant]]
        subprocess.run(
            [
                sys.executable,
                "-m",
                "xlafw.main",
                "--fdl_config=llama_tiny",
                f"--fdl.trainer.max_steps={steps}",
                "--fdl.checkpoint.every_steps=0",
                f"--fdl.trainer.run_dir={run_dir}",
                *sets,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f]
    rows = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    wall = rows[-1]["timestamp"] - rows[0]["timestamp"]
    return {
        "rows": rows,
        "evals": evals,
        "final_loss": statistics.mean(r["loss"] for r in rows if r["step"] > steps - 50),
        "eval_loss": evals[-1]["eval_loss"] if evals else float("nan"),
        "step_s": statistics.median(r["step_time_s"] for r in rows if r["step"] > 20),
        "eval_share": sum(e["eval_time_s"] for e in evals[1:]) / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--png", default="precision_curves.png")
    args = parser.parse_args()
    results = {name: run(name, args.steps) for name in VARIANTS}

    print(
        f"\nllama_tiny, {args.steps} steps (loss: mean of the logged windows after step "
        f"{args.steps - 50}; step time: median after step 20)"
    )
    print(f"{'variant':<8} {'train loss':>10} {'eval loss':>10} {'s/step':>8} {'eval share':>11}")
    for name, r in results.items():
        print(
            f"{name:<8} {r['final_loss']:>10.4f} {r['eval_loss']:>10.4f} {r['step_s']:>8.3f} "
            f"{r['eval_share']:>10.1%}"
        )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, r in results.items():
        steps, losses = [x["step"] for x in r["rows"]], [x["loss"] for x in r["rows"]]
        (line,) = ax.plot(steps, losses, label=name)
        ax.plot(
            [e["step"] for e in r["evals"]],
            [e["eval_loss"] for e in r["evals"]],
            "o--",
            color=line.get_color(),
            label=f"{name} eval",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("llama_tiny: fp32 vs mixed precision vs pure bf16")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.png, dpi=100)
    print(f"plot: {args.png}")


if __name__ == "__main__":
    main()
