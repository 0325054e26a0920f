"""Compile time of the full train step (fwd + bwd + AdamW) vs depth: loop, scan, scan + remat.

Run (from the repository root; one process per configuration, each 1 or 8 devices):

    PY=$(make -s python-path); PJRT_DEVICE=CPU $PY benchmarks/compile_vs_depth.py
    PJRT_DEVICE=CPU $PY benchmarks/compile_vs_depth.py --depths 4,8 --devices 8
    PJRT_DEVICE=CPU $PY benchmarks/compile_vs_depth.py --depths 4,8 --devices 8 --rules fsdp8

The model is a Llama of width 256 (4 heads, 2 KV heads, MLP 688), vocabulary
1024, batch 8 x seq 128, fp32. Each configuration runs two steps (step 1 has no
AdamW state, step 2 does: the two graphs a run compiles) and reports torch_xla's
CompileTime metric summed over them, and the HLO size of step 2's graph.

``--rules`` picks the sharding on more than one device (ignored on one; the
batch is always split over data x fsdp):

- ``fsdp_tp`` (default): mesh fsdp=N/2 x tensor=2, LLAMA_FSDP_TP (weights and
  activations);
- ``fsdp``: mesh fsdp=N, LLAMA_FSDP (weights and activations);
- ``fsdp8``: mesh fsdp=N, every weight's first dimension split over fsdp
  (``('fsdp', None)``; 1-D weights ``('fsdp',)``), no activation annotations:
  the case torch_xla-cpu.md measured scan at 10x the loop's compile time.

``--variants`` picks a subset of loop, scan, scan+remat. The children inherit
the environment, so ``XLA_FLAGS`` (for instance
``--xla_cpu_use_fusion_emitters=false``, see BUILD_NOTES.md) reaches every
compile; the table's caption repeats it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

VARIANTS = {
    "loop": {},
    "scan": {"scan_layers": "model.layers"},
    "scan+remat": {"scan_layers": "model.layers", "checkpoint_modules": ("LlamaDecoderLayer",)},
}


RULES = ("fsdp_tp", "fsdp", "fsdp8")


def make_mesh(devices: int, rules: str):
    """Turns SPMD on (before any tensor exists) and sets the global mesh for ``rules``."""
    import numpy as np
    import torch_xla.distributed.spmd as xs
    import torch_xla.runtime as xr

    xr.use_spmd()
    tensor = 2 if rules == "fsdp_tp" else 1
    names = ("data", "fsdp", "tensor", "context", "expert")
    mesh = xs.Mesh(np.arange(devices), (1, devices // tensor, tensor, 1, 1), names)
    xs.set_global_mesh(mesh)
    return mesh


def shard(model, mesh, rules: str) -> None:
    """Shards ``model``'s weights (and activations, when the rules name them)."""
    import torch_xla.distributed.spmd as xs
    from torch_xla.distributed.spmd.xla_sharding import apply_xla_patch_to_nn_linear

    from xlafw.models.llama import LLAMA_FSDP, LLAMA_FSDP_TP
    from xlafw.parallel import apply as parallel_apply

    apply_xla_patch_to_nn_linear(model)
    table = {"fsdp_tp": LLAMA_FSDP_TP, "fsdp": LLAMA_FSDP}.get(rules)
    for name, param in model.named_parameters():
        every = ("fsdp",) + (None,) * (param.dim() - 1)  # fsdp8
        spec = every if table is None else table.spec_for(name)
        if spec:
            xs.mark_sharding(param, mesh, spec)
    if table is not None:
        for name, module in model.named_modules():
            spec = table.activation_spec_for(name) if name else None
            if spec is not None:
                module.register_forward_hook(parallel_apply._annotate_output(mesh, spec))


def measure(depth: int, variant: str, devices: int, rules: str) -> dict:
    """One configuration, in this process (the runtime is per process)."""
    import torch
    import torch_xla
    import torch_xla.debug.metrics as met

    from xlafw.models.llama import LlamaConfig, LlamaForCausalLM
    from xlafw.optim import AdamW
    from xlafw.parallel import apply as parallel_apply
    from xlafw.parallel.remat import RematPolicy

    mesh = make_mesh(devices, rules) if devices > 1 else None
    device = torch_xla.device()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=1024,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=depth,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config).to(device)
    if mesh is not None:
        shard(model, mesh, rules)
    parallel_apply.apply_checkpointing(model, RematPolicy(**VARIANTS[variant]))
    optimizer = AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 1024, (8, 128)).to(device)
    if mesh is not None:
        import torch_xla.distributed.spmd as xs

        xs.mark_sharding(ids, mesh, (("data", "fsdp"), None))
    hlo_lines = 0
    start = time.perf_counter()
    for step in range(2):
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step == 1:
            params = [p for p in model.parameters()]
            hlo_lines = torch_xla._XLAC._get_xla_tensors_hlo([loss, *params]).count("\n")
        torch_xla.sync()
    loss.item()
    wall = time.perf_counter() - start
    compile_ns = met.metric_data("CompileTime")[1]
    return {
        "depth": depth,
        "variant": variant,
        "devices": devices,
        "rules": rules if devices > 1 else "-",
        "compile_s": compile_ns / 1e9,
        "wall_s": wall,
        "hlo_lines": hlo_lines,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="4,8,16,32")
    parser.add_argument("--devices", default="1,8")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    parser.add_argument("--rules", choices=RULES, default="fsdp_tp", help="sharding on >1 device")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # depth,variant,devices: child mode
    args = parser.parse_args()
    if args.one:
        depth, variant, devices = args.one.split(",")
        result = measure(int(depth), variant, int(devices), args.rules)
        print("RESULT " + json.dumps(result), flush=True)
        return
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    rows = []
    for devices in (int(d) for d in args.devices.split(",")):
        for depth in (int(d) for d in args.depths.split(",")):
            for variant in variants:
                env = {**os.environ, "PJRT_DEVICE": "CPU", "CPU_NUM_DEVICES": str(devices)}
                one = f"{depth},{variant},{devices}"
                proc = subprocess.run(
                    [sys.executable, __file__, "--one", one, "--rules", args.rules],
                    capture_output=True,
                    text=True,
                    env=env,
                )
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if not line:
                    print(
                        f"{devices} dev, {depth} layers, {variant}: FAILED (rc {proc.returncode})\n"
                        f"{proc.stderr[-2000:]}"
                    )
                    continue
                rows.append(json.loads(line[0][7:]))
                r = rows[-1]
                print(
                    f"# {devices} dev {depth:>2} layers {variant:<10} "
                    f"compile {r['compile_s']:6.2f} s (wall {r['wall_s']:.1f} s)",
                    flush=True,
                )
    print(f"\nrules on >1 device: {args.rules}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(
        f"\n| devices | layers | {variants[0]} compile s (HLO lines) | "
        + " | ".join(variants[1:])
        + " |"
    )
    print("|---|---|" + "---|" * len(variants))
    for devices in sorted({r["devices"] for r in rows}):
        for depth in sorted({r["depth"] for r in rows}):
            cells = []
            for variant in variants:
                hit = [
                    r
                    for r in rows
                    if (r["devices"], r["depth"], r["variant"]) == (devices, depth, variant)
                ]
                cells.append(
                    f"{hit[0]['compile_s']:.2f} ({hit[0]['hlo_lines']:,})" if hit else "failed"
                )
            print(f"| {devices} | {depth} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
