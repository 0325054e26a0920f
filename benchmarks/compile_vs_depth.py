"""Compile time of the full train step (fwd + bwd + AdamW) vs depth: loop, scan, scan + remat.

Run (from the repository root; one process per configuration, each 1 or 8 devices):

    PY=$(make -s python-path); PJRT_DEVICE=CPU $PY benchmarks/compile_vs_depth.py
    PJRT_DEVICE=CPU $PY benchmarks/compile_vs_depth.py --depths 4,8 --devices 8

The model is a Llama of width 256 (4 heads, 2 KV heads, MLP 688), vocabulary
1024, batch 8 x seq 128, fp32. Each configuration runs two steps (step 1 has no
AdamW state, step 2 does: the two graphs a run compiles) and reports torch_xla's
CompileTime metric summed over them, and the HLO size of step 2's graph. On 8
devices the mesh is fsdp=4 x tensor=2 with LLAMA_FSDP_TP.
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


def measure(depth: int, variant: str, devices: int) -> dict:
    """One configuration, in this process (the runtime is per process)."""
    import numpy as np
    import torch
    import torch_xla
    import torch_xla.debug.metrics as met
    import torch_xla.runtime as xr

    from xlafw.models.llama import LlamaConfig, LlamaForCausalLM
    from xlafw.optim import AdamW
    from xlafw.parallel import apply as parallel_apply
    from xlafw.parallel.remat import RematPolicy

    mesh = None
    if devices > 1:
        import torch_xla.distributed.spmd as xs

        from xlafw.parallel.rules import LLAMA_FSDP_TP

        xr.use_spmd()
        names = ("data", "fsdp", "tensor", "context", "expert")
        mesh = xs.Mesh(np.arange(devices), (1, devices // 2, 2, 1, 1), names)
        xs.set_global_mesh(mesh)
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
        from torch_xla.distributed.spmd.xla_sharding import apply_xla_patch_to_nn_linear

        apply_xla_patch_to_nn_linear(model)
        for name, param in model.named_parameters():
            if spec := LLAMA_FSDP_TP.spec_for(name):
                xs.mark_sharding(param, mesh, spec)
        for name, module in model.named_modules():
            spec = LLAMA_FSDP_TP.activation_spec_for(name) if name else None
            if spec is not None:
                module.register_forward_hook(parallel_apply._annotate_output(mesh, spec))
    parallel_apply.apply_checkpointing(model, RematPolicy(**VARIANTS[variant]))
    optimizer = AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 1024, (8, 128)).to(device)
    if mesh is not None:
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
        "compile_s": compile_ns / 1e9,
        "wall_s": wall,
        "hlo_lines": hlo_lines,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="4,8,16,32")
    parser.add_argument("--devices", default="1,8")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # depth,variant,devices: child mode
    args = parser.parse_args()
    if args.one:
        depth, variant, devices = args.one.split(",")
        print("RESULT " + json.dumps(measure(int(depth), variant, int(devices))), flush=True)
        return
    rows = []
    for devices in (int(d) for d in args.devices.split(",")):
        for depth in (int(d) for d in args.depths.split(",")):
            for variant in VARIANTS:
                env = {**os.environ, "PJRT_DEVICE": "CPU", "CPU_NUM_DEVICES": str(devices)}
                proc = subprocess.run(
                    [sys.executable, __file__, "--one", f"{depth},{variant},{devices}"],
                    capture_output=True,
                    text=True,
                    env=env,
                )
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if not line:
                    print(
                        f"{devices} dev, {depth} layers, {variant}: FAILED\n{proc.stderr[-2000:]}"
                    )
                    continue
                rows.append(json.loads(line[0][7:]))
                r = rows[-1]
                print(
                    f"# {devices} dev {depth:>2} layers {variant:<10} "
                    f"compile {r['compile_s']:6.2f} s",
                    flush=True,
                )
    print("\n| devices | layers | loop compile s (HLO lines) | scan | scan+remat |")
    print("|---|---|---|---|---|")
    for devices in sorted({r["devices"] for r in rows}):
        for depth in sorted({r["depth"] for r in rows}):
            cells = []
            for variant in VARIANTS:
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
