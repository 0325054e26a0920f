"""Gradient accumulation: a traced Python loop vs torch_xla's XLA while loop.

Run from the repository root on an otherwise idle machine:

    PY=$(make -s python-path); $PY -m benchmarks.grad_accum --accum 4 --steps 12

Both variants run llama_tiny's model and AdamW on one XLA CPU device with the
global batch of 8 split into ``--accum`` micro-batches, in one process:

- ``traced``: xlafw's step (``Trainer.train_step``): the micro-batches are
  unrolled into the one step graph, each backward adding to the gradients.
- ``while``: ``torch_xla.experimental.gradient_accumulation``: the forward and
  backward of one micro-batch are traced once into the body of an XLA
  ``While`` that iterates over the micro-batch dimension.

It reports the compile time of the step (the first two steps: with and
without optimizer state), the median steady step time, and the largest
relative difference of the losses against the unaccumulated step.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accum", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()

    import fiddle as fdl
    import torch
    import torch_xla
    from torch_xla.experimental.gradient_accumulation import gradient_accumulation

    from xlafw import runtime
    from xlafw.config import build_config
    from xlafw.models.llama import IGNORE_INDEX
    from xlafw.optim import clip_grad_norm
    from xlafw.trainer import Trainer

    def trainer(accum: int) -> Trainer:
        cfg = build_config(
            "llama_tiny",
            sets=[
                f"trainer.grad_accum_steps={accum}",
                "eval.every_steps=0",
                "trainer.run_dir=/tmp/xlafw_bench_accum",
                "checkpoint.resume=auto",
            ],
        )
        t = Trainer(fdl.build(cfg), cfg)
        t.setup()
        return t

    def while_step(t: Trainer, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        k = args.accum
        target_tokens = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
        denominator = target_tokens.clamp(min=1).float()
        stacked = [
            batch[key].view(-1, k, *batch[key].shape[1:]).transpose(0, 1).contiguous()
            for key in ("input_ids", "labels")
        ]

        # torch_xla divides the accumulated loss by k before its backward (a mean of
        # per-micro-batch means); scaling by k keeps the token-weighted global loss.
        def micro(input_ids, labels, denominator):
            part = t.model(input_ids=input_ids, labels=labels).loss_sum / denominator
            return part * k, denominator

        loss, _ = gradient_accumulation(micro, tuple(stacked), t.model, denominator)
        clip_grad_norm(t.params, t.settings.max_grad_norm)
        t.optimizer.step()
        t.optimizer.zero_grad(set_to_none=True)
        return loss

    def measure(t: Trainer, step_fn) -> dict:
        batches = [
            {k: v.to(t.rt.device) for k, v in b.items()}
            for b in (next(iter(t.data)) for _ in range(1))
        ] * args.steps
        torch_xla.sync()
        losses, times = [], []
        before_compile = runtime.compile_seconds()
        for i, batch in enumerate(batches):
            start = time.perf_counter()
            with torch_xla.compile():
                loss = step_fn(t, batch)
            losses.append(loss.item())
            times.append(time.perf_counter() - start)
            if i == 1:
                compile_s = runtime.compile_seconds() - before_compile
        return {"losses": losses, "compile_s": compile_s, "step_s": statistics.median(times[3:])}

    results = {}
    for name, accum, step_fn in (
        ("whole batch", 1, lambda t, b: t.train_step(b)[0]),
        ("traced", args.accum, lambda t, b: t.train_step(b)[0]),
        ("while", args.accum, while_step),
    ):
        runtime.seed_everything(0)
        results[name] = measure(trainer(accum), step_fn)

    reference = results["whole batch"]["losses"]
    print(f"\nllama_tiny, global batch 8, {args.accum} micro-batches, {args.steps} steps")
    print(f"{'variant':<12} {'compile s':>10} {'s/step':>8} {'max rel. loss diff':>19}")
    for name, r in results.items():
        gap = max(abs(a - b) / abs(b) for a, b in zip(r["losses"], reference, strict=True))
        print(f"{name:<12} {r['compile_s']:>10.2f} {r['step_s']:>8.3f} {gap:>19.2e}")


if __name__ == "__main__":
    main()
