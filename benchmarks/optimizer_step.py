"""The optimizer's share of the one-device step: xlafw's AdamW vs torch's, alone.

Run from the repository root on an otherwise idle machine:

    PY=$(make -s python-path); PJRT_DEVICE=CPU $PY -m benchmarks.optimizer_step

llama_tiny's parameters (19.3M, float32) on one XLA CPU device, fixed random
gradients, and one optimizer step per compiled graph, for each variant in
turn, alternating over ``--rounds``:

- ``torch``: ``torch.optim.AdamW`` + ``torch.nn.utils.clip_grad_norm_`` (the
  hand loop's);
- ``xlafw``: ``xlafw.optim.AdamW`` (update clipping 1.0, the logged update
  norm, the on-device schedule) + ``xlafw.optim.clip_grad_norm`` (the
  trainer's);
- ``xlafw, no update clip``: the same with ``update_clip=None``.

Reports per step the wall time, the process's CPU time (every thread: on the
CPU backend the device is the host) and XLA's ExecuteTime, medians over the
measured steps. One graph per variant: its compile is excluded (warm-up).
"""

from __future__ import annotations

import argparse
import statistics
import time

import fiddle as fdl
import torch


def _params(device) -> list[torch.nn.Parameter]:
    from xlafw.config import build_config
    from xlafw.models import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(fdl.build(build_config("llama_tiny").model.config)).to(device)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-2
    return params


def _optimizer(variant: str, params):
    from xlafw.optim import AdamW, clip_grad_norm

    if variant == "torch":
        opt = torch.optim.AdamW(params, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)

        def step():
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()

        return step
    clip = 1.0 if variant == "xlafw" else None
    opt = AdamW(params, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1, update_clip=clip)
    opt.init_state()

    def step():
        norm = clip_grad_norm(params, 1.0)
        opt.step()
        return norm, opt.last_update_norm

    return step


def measure(variant: str, steps: int, warmup: int) -> dict:
    import torch_xla
    import torch_xla.core.xla_model as xm
    import torch_xla.debug.metrics as met

    params = _params(torch_xla.device())
    step = _optimizer(variant, params)
    walls, cpus, executes = [], [], []
    for i in range(warmup + steps):
        grads = [p.grad.clone() for p in params]  # the same gradients every step
        torch_xla.sync()
        xm.wait_device_ops()
        executed = (met.metric_data("ExecuteTime") or (0, 0))[1]
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        torch_xla.sync()
        xm.wait_device_ops()
        if i >= warmup:
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
            executes.append(((met.metric_data("ExecuteTime") or (0, 0))[1] - executed) / 1e9)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
    return {
        "wall_s": statistics.median(walls),
        "cpu_s": statistics.median(cpus),
        "execute_s": statistics.median(executes),
    }


VARIANTS = ("torch", "xlafw", "xlafw, no update clip")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            results[variant].append(measure(variant, args.steps, args.warmup))
    print(f"optimizer step alone, llama_tiny parameters (19.3M fp32), {args.rounds} rounds")
    print(f"{'variant':24s} {'wall s':>8s} {'CPU s':>8s} {'execute s':>9s}")
    for variant, runs in results.items():
        row = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{variant:24s} {row['wall_s']:8.4f} {row['cpu_s']:8.4f} {row['execute_s']:9.4f}")


if __name__ == "__main__":
    main()
