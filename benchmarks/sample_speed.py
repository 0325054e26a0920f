"""Sampling speed from a run's checkpoint: XLA (static shapes) vs eager CPU.

Run from the repository root after ``make train`` (or on any run directory):

    PY=$(make -s python-path)
    $PY -m benchmarks.sample_speed --run_dir=runs/llama_tiny

For each device and each way of choosing tokens (greedy; temperature 0.8 with
top-k 40) it generates ``--max_new_tokens`` from a short prompt three times:
cold (prefill and decode-step compilations on XLA), warm, and warm with half
the new tokens. Eager CPU runs with torch's intra-op threads and with one
(``device/threads`` in the table). It prints the time to the first token, the
steady decode rate (tokens after the second) and XLA compilations per call, so
"no recompilation per token or per length" reads as ``0`` in the warm columns.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from xlafw.sample import SamplingSettings, from_run_dir, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run_dir", default="runs/llama_tiny")
    parser.add_argument("--prompt", default="ROMEO:")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    args = parser.parse_args()

    loaded = from_run_dir(args.run_dir)
    prompt_ids = loaded.tokenizer.encode_batch([args.prompt])[0]
    print(f"{loaded.source}: prompt {len(prompt_ids)} tokens, {args.max_new_tokens} new tokens")
    print(
        f"{'device':<6} {'choice':<18} {'cold 1st s':>10} {'cold 2nd s':>10} {'cold compiles':>13} "
        f"{'warm 1st s':>10} {'tokens/s':>9} {'warm compiles':>13} {'half compiles':>13}"
    )
    choices = {
        "greedy": SamplingSettings(args.max_new_tokens),
        "T=0.8, top_k=40": SamplingSettings(args.max_new_tokens, temperature=0.8, top_k=40),
    }
    default_threads = torch.get_num_threads()
    # CPU first: once XLA has run, its idle threads compete with eager ops.
    for device, threads in (("cpu", default_threads), ("cpu", 1), ("xla", default_threads)):
        torch.set_num_threads(threads)
        model = loaded.model
        if device == "xla":
            from xlafw import runtime

            model = model.to(runtime.start(spmd=False).device)
        for name, settings in choices.items():
            cold = generate(model, prompt_ids, settings)
            warm = generate(model, prompt_ids, settings)
            half = dataclasses.replace(settings, max_new_tokens=args.max_new_tokens // 2)
            shorter = generate(model, prompt_ids, half)
            print(
                f"{device + f'/{threads}':<6} {name:<18} {cold.first_token_s:>10.3f} "
                f"{cold.second_token_s:>10.3f} {cold.compilations!s:>13} "
                f"{warm.first_token_s:>10.3f} {warm.tokens_per_s:>9.1f} "
                f"{warm.compilations!s:>13} {shorter.compilations!s:>13}"
            )


if __name__ == "__main__":
    main()
