"""The sharded step: xlafw vs a minimal hand-written SPMD loop, time and collectives.

Run from the repository root on an otherwise idle machine:

    PY=$(make -s python-path); $PY -m benchmarks.sharded_step --rounds 1 --steps 40

For each mesh, alternating in each round, every run in a fresh process:

- xlafw: ``python -m xlafw.main --fdl_config=EXPERIMENT`` (llama_tiny with
  ``CPU_NUM_DEVICES=4``: FSDP over 4 devices; llama_tiny_spmd with
  ``CPU_NUM_DEVICES=8``: FSDP 4 x tensor 2), checkpoints off;
- the hand loop (``--hand`` mode of this file): the same LlamaForCausalLM and
  data, the experiment's mesh and sharding rules applied by hand
  (``xs.mark_sharding`` of every parameter, the rules' activation annotations
  through forward hooks, inputs sharded over the batch axes), plain
  ``nn.Linear``, ``torch.optim.AdamW`` and ``clip_grad_norm_``, one
  ``torch_xla.compile`` per step. ``--hand_linear=einsum`` gives it torch_xla's
  einsum ``nn.Linear`` patch, as xlafw applies under SPMD.

- torchprime (``--torchprime DIR``, its source; set up by
  ``python -m benchmarks.torchprime_step --setup``, whose docstring lists what
  runs and every difference from xlafw's workload): torchprime's own trainer
  on llama_tiny's model, batches and AdamW, FSDP over the same 4 devices, in
  the fsdp=4 table only.

``--single`` adds xlafw on one device (the reference of the "sharded step costs
what the one-device step costs" target) to the first mesh's table, and with
``--torchprime`` torchprime on one device to the fsdp=4 table.

Every process runs with XLA dumping its compiled modules; the step's module
(the largest) gives the collectives per step and the bytes they leave on each
device (``xlafw.parallel.hlo``). s/step is the median of the logging windows
after step ``--warmup``; CPU s/step is the process's CPU time (every thread,
from /proc) between the first logged step after warm-up and the last step,
divided by the steps between them. Prints one table per mesh. torchprime's
compiles are torch_xla's ``UncachedCompile`` count, its model's on-device
initialization included; its collectives are those of its largest module but
that initialization (``torchprime_step.run_torchprime``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

from benchmarks.torchprime_step import add_arguments as add_torchprime_arguments
from benchmarks.torchprime_step import run_torchprime

ROOT = Path(__file__).resolve().parents[1]
MESHES = {
    "fsdp=4": ("llama_tiny", 4),
    "fsdp 4 x tensor 2": ("llama_tiny_spmd", 8),
}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as f:
        lines = f.read().splitlines()
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            break
        if "loss" in row:
            rows.append(row)
    return rows


def _watch(cmd: list[str], env: dict, metrics: Path, warmup: int, steps: int) -> dict:
    """Runs ``cmd``, reading its CPU time when step ``warmup``'s and the last row appear."""
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    cpu: dict[int, float] = {}
    output = []
    reader = _drain(proc, output)
    while proc.poll() is None:
        for row in _rows(metrics):
            # The first logged step after warm-up, then the last step.
            wanted = not cpu if row["step"] < steps else row["step"] not in cpu
            if row["step"] >= warmup and wanted:
                cpu[row["step"]] = _cpu_seconds(proc.pid)
        time.sleep(0.02)
    reader.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{''.join(output)[-4000:]}")
    rows = _rows(metrics)
    (first, last) = sorted(cpu) if len(cpu) == 2 else (None, None)
    windows = [
        (b["timestamp"] - a["timestamp"]) / (b["step"] - a["step"])
        for a, b in itertools.pairwise(rows)
        if a["step"] >= warmup
    ]
    return {
        "step_s": statistics.median(windows),
        "cpu_s": (cpu[last] - cpu[first]) / (last - first) if first is not None else float("nan"),
        "losses": [r["loss"] for r in rows],
        "output": "".join(output),
    }


def _drain(proc: subprocess.Popen, into: list[str]) -> threading.Thread:
    """Collects the process's output in a thread (a full pipe would block it)."""

    def read():
        for line in proc.stdout:
            into.append(line)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def _collectives(dump: Path, exclude: frozenset[Path] = frozenset()) -> dict:
    """Collectives of the largest compiled module (the step's), ``exclude`` aside."""
    from xlafw.parallel import hlo

    found = hlo.collectives(hlo.largest_module(dump, exclude).read_text())
    return {"total": found.total, "bytes": found.total_bytes, "counts": found.counts}


def _dump_env(devices: int, dump: Path) -> dict[str, str]:
    """This environment with ``devices`` virtual CPU devices and XLA dumping modules to ``dump``."""
    return {
        **os.environ,
        "CPU_NUM_DEVICES": str(devices),
        "XLA_FLAGS": f"--xla_dump_to={dump} --xla_dump_hlo_as_text",
    }


def run_xlafw(experiment: str, devices: int, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir, dump = Path(tmp) / "run", Path(tmp) / "dump"
        env = _dump_env(devices, dump)
        cmd = [
            sys.executable,
            "-m",
            "xlafw.main",
            f"--fdl_config={experiment}",
            f"--fdl.trainer.max_steps={args.steps}",
            f"--fdl.trainer.log_every={args.log_every}",
            f"--fdl.trainer.param_dtype={args.dtype}",
            "--fdl.checkpoint.every_steps=0",
            "--fdl.eval.every_steps=0",
            f"--fdl.trainer.run_dir={run_dir}",
            *args.xlafw_args,
        ]
        result = _watch(cmd, env, run_dir / "metrics.jsonl", args.warmup, args.steps)
        with open(run_dir / "summary.json") as f:
            result["compiles"] = json.load(f)["compiles"]
        result["collectives"] = _collectives(dump)
    return result


def run_hand(experiment: str, devices: int, args, linear: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        metrics, dump = Path(tmp) / "metrics.jsonl", Path(tmp) / "dump"
        env = _dump_env(devices, dump)
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.sharded_step",
            "--hand",
            f"--experiment={experiment}",
            f"--steps={args.steps}",
            f"--log_every={args.log_every}",
            f"--dtype={args.dtype}",
            f"--hand_linear={linear}",
            f"--metrics={metrics}",
        ]
        result = _watch(cmd, env, metrics, args.warmup, args.steps)
        result["compiles"] = _rows(metrics)[-1]["compiles"]
        result["collectives"] = _collectives(dump)
    return result


def hand_loop(args) -> None:
    """The minimal hand-written SPMD loop (run in its own process by ``run_hand``)."""
    import fiddle as fdl
    import numpy as np
    import torch
    import torch_xla
    import torch_xla.debug.metrics as met
    import torch_xla.distributed.spmd as xs
    import torch_xla.runtime as xr

    from benchmarks.minimal_loop import batches
    from xlafw.config import build_config
    from xlafw.models import LlamaForCausalLM
    from xlafw.parallel.mesh import AXIS_NAMES, BATCH_AXES

    cfg = build_config(args.experiment)
    data = batches(args.steps)
    xr.use_spmd()
    n = xr.global_runtime_device_count()
    sizes = fdl.build(cfg.mesh).resolve(n)
    mesh = xs.Mesh(np.arange(n), tuple(sizes[a] for a in AXIS_NAMES), AXIS_NAMES)
    rules = fdl.build(cfg.sharding)
    torch.manual_seed(0)
    device = torch_xla.device()
    torch.set_default_dtype(getattr(torch, args.dtype))
    model = LlamaForCausalLM(fdl.build(cfg.model.config)).to(device)
    torch.set_default_dtype(torch.float32)
    if args.hand_linear == "einsum":
        from torch_xla.distributed.spmd.xla_sharding import apply_xla_patch_to_nn_linear

        apply_xla_patch_to_nn_linear(model)
    for name, param in model.named_parameters():
        if spec := rules.spec_for(name):
            xs.mark_sharding(param, mesh, spec)
    for name, module in model.named_modules():
        if name and (spec := rules.activation_spec_for(name)) is not None:

            def hook(module, inputs, output, spec=spec):
                return xs.mark_sharding_with_gradients(output, mesh, spec)

            module.register_forward_hook(hook)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95))
    with open(args.metrics, "w") as out:
        for step in range(1, args.steps + 1):
            ids = data[step - 1].to(device)
            xs.mark_sharding(ids, mesh, (BATCH_AXES, None))
            with torch_xla.compile():
                loss = model(ids, labels=ids).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if step == 1 or step % args.log_every == 0:
                row = {
                    "step": step,
                    "loss": loss.item(),  # waits for the step, as a logging loop does
                    "timestamp": time.time(),
                    "compiles": int(met.counter_value("UncachedCompile") or 0),
                }
                out.write(json.dumps(row) + "\n")
                out.flush()


def _table(title: str, results: dict[str, list[dict]], steps: int, warmup: int) -> None:
    print(f"\n{title}: llama_tiny, [8, 256] batches, median of steps {warmup}-{steps}")
    print(
        f"{'run':28s} {'s/step':>7s} {'CPU s/step':>10s} {'compiles':>8s} "
        f"{'collectives':>11s} {'MiB/step':>8s}  by kind (AR, AG, RS, A2A, CP)"
    )
    for name, runs in results.items():
        step = statistics.median(r["step_s"] for r in runs)
        cpu = statistics.median(r["cpu_s"] for r in runs)
        c = runs[0]["collectives"]
        kinds = ", ".join(str(n) for n in c["counts"].values())
        print(
            f"{name:28s} {step:7.3f} {cpu:10.2f} {runs[0]['compiles']:8d} "
            f"{c['total']:11d} {c['bytes'] / 2**20:8.1f}  {kinds}"
        )
    names = list(results)
    pairs = [(names[0], other) for other in names[1:]]
    singles = [name for name in names if "1 device" in name]
    if len(singles) == 2:  # xlafw and torchprime, each on one device
        pairs.append((singles[0], singles[1]))
    for name, other in pairs:
        ratio = statistics.median(r["step_s"] for r in results[name]) / statistics.median(
            r["step_s"] for r in results[other]
        )
        print(f"{name} / {other}: {ratio:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--log_every", type=int, default=5)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--meshes", default=",".join(MESHES), help="comma-separated")
    parser.add_argument("--single", action="store_true", help="add xlafw on one device")
    parser.add_argument(
        "--hand_linears", default="plain", help="hand-loop variants: plain, einsum or both"
    )
    parser.add_argument("--xlafw_args", nargs="*", default=[], help="extra xlafw flags")
    parser.add_argument(
        "--torchprime",
        type=Path,
        metavar="DIR",
        help="torchprime's source: add its runs to the fsdp=4 table (benchmarks.torchprime_step)",
    )
    add_torchprime_arguments(parser)
    # The hand loop's own process.
    parser.add_argument("--hand", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--experiment", help=argparse.SUPPRESS)
    parser.add_argument("--hand_linear", default="plain", help=argparse.SUPPRESS)
    parser.add_argument("--metrics", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hand:
        hand_loop(args)
        return
    linears = ["plain", "einsum"] if args.hand_linears == "both" else [args.hand_linears]
    variant = ""  # torchprime's row names say when it runs other than as documented
    if args.torchprime_optimizer == "adafactor":
        variant = ", adafactor"
    elif args.torchprime_clip:
        variant = ", clip"
    tables = {}
    for index, mesh in enumerate(args.meshes.split(",")):
        experiment, devices = MESHES[mesh]
        # torchprime runs llama_tiny's workload (FSDP over every device) only.
        torchprime = args.torchprime if mesh == "fsdp=4" else None
        runs = {f"xlafw {mesh}": partial(run_xlafw, experiment, devices, args)}
        for linear in linears:
            runs[f"hand loop {mesh}, {linear}"] = partial(
                run_hand, experiment, devices, args, linear
            )
        if torchprime:
            runs[f"torchprime {mesh}{variant}"] = partial(run_torchprime, devices, args, torchprime)
        if args.single and index == 0:
            runs["xlafw, 1 device"] = partial(run_xlafw, experiment, 1, args)
        if args.single and torchprime:
            runs[f"torchprime, 1 device{variant}"] = partial(run_torchprime, 1, args, torchprime)
        results: dict[str, list[dict]] = {name: [] for name in runs}
        for _ in range(args.rounds):  # every run once per round, in this order
            for name, run in runs.items():
                results[name].append(run())
        tables[mesh] = results
        _table(mesh, results, args.steps, args.warmup)
    print(json.dumps({m: {k: v for k, v in r.items()} for m, r in tables.items()}, default=str))


if __name__ == "__main__":
    main()
