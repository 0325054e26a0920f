"""Mixtral's static dispatch paths: gather/scatter by index vs GShard's one-hot einsums.

Run from the repository root on an otherwise idle machine:

    PY=$(make -s python-path); $PY -m benchmarks.moe_dispatch --steps 12

Each variant runs mixtral_tiny's model (8 experts, top 2, fp32) on one XLA
CPU device, global batch 8 x 256 tokens, in a fresh process: a step is the
forward (cross-entropy plus the weighted load-balancing loss), the backward
and a plain SGD update, one compiled graph. Variants: ``moe_kernel`` gather
and einsum, each dropless (capacity = sequence) and with ``capacity_factor``
1.25. Reported per variant:

- compile s: XLA compile time of the first two steps (the graph is the same
  from step 1 on, so this is one compilation);
- s/step: the median step time from step 4 on (with ``--rounds R`` the
  variants run R times, alternating, and the median over rounds is shown with
  its range);
- CPU s/step: the same for the process's CPU time (all its threads), which
  other work on a shared machine disturbs far less than wall time;
- program MiB: the step program's allocation from XLA's buffer assignment
  (``Total bytes used`` in the dump; parameters, activations and temporaries);
- peak RSS MiB: the process's peak resident memory (includes the runtime).

With ``--spmd`` it runs mixtral_tiny_ep's layout instead (8 virtual CPU
devices, mesh expert 4 x fsdp 2, ``MIXTRAL_EP`` rules: the batch split over
every batch axis outside the MoE blocks, dispatched tokens and expert outputs
over ``(data, fsdp)`` and ``expert``), dropless, and reports the collectives
XLA's SPMD partitioner put into the step program (count and result bytes per
kind, from the optimized HLO) and whether the loss equals the 1-device one.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

VARIANTS = (
    ("gather", None),
    ("einsum", None),
    ("gather", 1.25),
    ("einsum", 1.25),
)


def _shard(model, ids):
    """Lays the model and the batch over mixtral_tiny_ep's mesh with ``MIXTRAL_EP``."""
    import numpy as np
    import torch_xla.distributed.spmd as xs

    from xlafw.models.mixtral import MIXTRAL_EP
    from xlafw.parallel import AXIS_NAMES, BATCH_AXES

    mesh = xs.Mesh(np.arange(8), (1, 2, 1, 1, 4), AXIS_NAMES)  # fsdp 2 x expert 4
    xs.set_global_mesh(mesh)
    for name, param in model.named_parameters():
        xs.mark_sharding(param, mesh, MIXTRAL_EP.spec_for(name))

    def annotate(spec):
        def hook(module, args, output):
            if isinstance(output, tuple):
                return (xs.mark_sharding_with_gradients(output[0], mesh, spec), *output[1:])
            return xs.mark_sharding_with_gradients(output, mesh, spec)

        return hook

    for name, module in model.named_modules():
        spec = MIXTRAL_EP.activation_spec_for(name) if name else None
        if spec is not None:
            module.register_forward_hook(annotate(spec))
    xs.mark_sharding(ids, mesh, (BATCH_AXES, None))


def run_variant(
    kernel: str, capacity_factor: float | None, steps: int, seq: int, spmd: bool = False
) -> dict:
    """Runs one variant in this process (called in a fresh subprocess); returns its figures."""
    import resource

    import fiddle as fdl
    import torch
    import torch_xla

    from experiments.mixtral import mixtral_tiny
    from xlafw import runtime
    from xlafw.models.mixtral import MixtralForCausalLM, MoeKernel

    cfg = mixtral_tiny()
    cfg.model.config.moe_kernel = MoeKernel(kernel)
    cfg.model.config.capacity_factor = capacity_factor
    config = fdl.build(cfg.model.config)
    if spmd:
        import torch_xla.runtime as xr

        xr.use_spmd()  # before anything starts the runtime
    runtime.seed_everything(0)
    model = MixtralForCausalLM(config)
    ids = torch.randint(0, config.vocab_size, (8, seq))
    device = torch_xla.device()
    model, ids = model.to(device), ids.to(device)
    if spmd:
        _shard(model, ids)
    params = list(model.parameters())
    times, cpu_times, losses = [], [], []
    compile_s = 0.0
    for step in range(steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        with torch_xla.compile():
            out = model(ids, labels=ids)
            (out.loss + out.aux_loss).backward()
            with torch.no_grad():
                for p in params:
                    p -= 1e-3 * p.grad
                    p.grad = None
        losses.append(out.loss.item())
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - start_cpu)
        if step == 1:
            compile_s = runtime.compile_seconds()
    return {
        "compile_s": compile_s,
        "step_s": statistics.median(times[3:]),
        "cpu_step_s": statistics.median(cpu_times[3:]),
        "compiles": runtime.compile_count(),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }


COLLECTIVES = ("all-to-all", "all-gather", "all-reduce", "reduce-scatter", "collective-permute")
_BYTES = {"f32": 4, "s32": 4, "u32": 4, "bf16": 2, "s64": 8, "u64": 8, "pred": 1}


def collectives(dump_dir: str) -> dict[str, tuple[int, int]]:
    """``{kind: (count, result bytes)}`` in the optimized step program (the largest graph)."""
    pattern = re.compile(
        r"= \(?([a-z0-9]+)\[([0-9,]*)\][^=]*? (" + "|".join(COLLECTIVES) + r")(?:-start)?\("
    )
    paths = glob.glob(os.path.join(dump_dir, "*SyncTensorsGraph*after_optimizations.txt"))
    with open(max(paths, key=os.path.getsize)) as f:
        text = f.read()
    found: dict[str, tuple[int, int]] = {}
    for dtype, dims, kind in pattern.findall(text):
        elements = 1
        for d in filter(None, dims.split(",")):
            elements *= int(d)
        count, nbytes = found.get(kind, (0, 0))
        found[kind] = (count + 1, nbytes + elements * _BYTES.get(dtype, 4))
    return found


def program_mib(dump_dir: str) -> float:
    """The largest ``Total bytes used`` among the dumped buffer assignments, in MiB."""
    largest = 0
    for path in glob.glob(os.path.join(dump_dir, "*buffer-assignment.txt")):
        with open(path) as f:
            match = re.search(r"Total bytes used: (\d+)", f.read())
        if match:
            largest = max(largest, int(match.group(1)))
    return largest / 2**20


def _run_subprocess(kernel: str, factor: float | None, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as dump:
        env = {
            **os.environ,
            "PJRT_DEVICE": "CPU",
            "CPU_NUM_DEVICES": "8" if args.spmd else "1",
            "XLA_FLAGS": f"--xla_dump_to={dump} --xla_dump_hlo_as_text",
        }
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.moe_dispatch",
                f"--variant={kernel}:{factor or ''}",
                f"--steps={args.steps}",
                f"--seq={args.seq}",
                *(["--spmd"] if args.spmd else []),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
        result = json.loads(line.removeprefix("RESULT "))
        result["program_mib"] = program_mib(dump)
        result["collectives"] = collectives(dump)
    return result


def _merge_rounds(rows: list) -> list:
    """One row per variant: medians of the timings over rounds (the rest is deterministic)."""
    merged: dict = {}
    for kernel, factor, result in rows:
        merged.setdefault((kernel, factor), []).append(result)
    out = []
    for (kernel, factor), results in merged.items():
        result = dict(results[0])
        for key in ("compile_s", "step_s", "cpu_step_s", "peak_rss_mib"):
            result[key] = statistics.median(r[key] for r in results)
        result["step_range"] = (
            min(r["step_s"] for r in results),
            max(r["step_s"] for r in results),
        )
        out.append((kernel, factor, result))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=1, help="runs of every variant, alternating")
    parser.add_argument("--spmd", action="store_true", help="8 devices, MIXTRAL_EP, collectives")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # kernel:factor, in a subprocess
    args = parser.parse_args()

    if args.variant:
        kernel, factor = args.variant.split(":")
        result = run_variant(
            kernel, float(factor) if factor else None, args.steps, args.seq, args.spmd
        )
        print("RESULT " + json.dumps(result))
        return

    variants = (("gather", None), ("einsum", None)) if args.spmd else VARIANTS
    rows = []
    for _ in range(args.rounds):  # variants alternate, so a busy spell hits all of them
        for kernel, factor in variants:
            rows.append((kernel, factor, _run_subprocess(kernel, factor, args)))
    rows = _merge_rounds(rows)

    if args.spmd:
        print(
            f"\nmixtral_tiny_ep layout (8 CPU devices, expert 4 x fsdp 2), dropless, batch 8 x "
            f"{args.seq}, {args.steps} steps; collectives per step: count / MiB of results"
        )
        print(
            f"{'dispatch':<8} {'s/step':>7} {'loss 1':>8} "
            + " ".join(f"{c:>20}" for c in COLLECTIVES)
        )
        for kernel, _, r in rows:
            cells = []
            for c in COLLECTIVES:
                count, nbytes = r["collectives"].get(c, (0, 0))
                cells.append(f"{count:>9} / {nbytes / 2**20:>8.2f}")
            print(f"{kernel:<8} {r['step_s']:>7.3f} {r['first_loss']:>8.4f} " + " ".join(cells))
        return

    print(
        f"\nmixtral_tiny, batch 8 x {args.seq}, 1 XLA CPU device, fp32, {args.steps} steps, "
        f"{args.rounds} round(s): medians, s/step range over rounds"
    )
    header = (
        f"{'dispatch':<8} {'capacity':>9} {'compile s':>10} {'s/step':>7} {'range':>13} "
        f"{'CPU s/step':>11} "
        f"{'program MiB':>12} {'peak RSS MiB':>13} {'compiles':>9} {'loss 1 -> last':>17}"
    )
    print(header)
    for kernel, factor, r in rows:
        capacity = "dropless" if factor is None else f"{factor}"
        losses = f"{r['first_loss']:.4f} -> {r['last_loss']:.4f}"
        low, high = r["step_range"]
        print(
            f"{kernel:<8} {capacity:>9} {r['compile_s']:>10.2f} {r['step_s']:>7.3f} "
            f"{f'{low:.3f}-{high:.3f}':>13} {r['cpu_step_s']:>11.3f} "
            f"{r['program_mib']:>12.1f} {r['peak_rss_mib']:>13.0f} {r['compiles']:>9} "
            f"{losses:>17}"
        )


if __name__ == "__main__":
    main()
