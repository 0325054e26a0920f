"""A minimal hand-written training loop: the baseline xlafw's overhead is measured against.

The same model class, shapes, data (Shakespeare, Mistral 32k tokenizer, packed
into [8, 256] rows), AdamW and gradient clipping as ``llama_tiny``, with none
of the framework: a plain loop calling ``torch_xla.sync()`` each step and
reading the loss every 10 steps (xlafw's logging cadence in the benchmark).
``--device=eager`` runs the same loop in eager PyTorch on the CPU.

Prints one JSON line: step times of the logging windows, compiles, compile
seconds and the time from process launch (``BENCH_LAUNCH_TIME``) to the end of
step 1.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import fiddle as fdl
import numpy as np
import torch

from xlafw.config import build_config
from xlafw.data import SHAKESPEARE_TEXTS, SentencePieceTokenizer, TextFiles
from xlafw.models import LlamaForCausalLM

SEQ_LEN, BATCH, LOG_EVERY = 256, 8, 10


def batches(steps: int) -> torch.Tensor:
    """``[steps, BATCH, SEQ_LEN]`` token ids: documents + EOS, packed in order."""
    tokenizer = SentencePieceTokenizer()
    needed = steps * BATCH * SEQ_LEN
    tokens: list[int] = []
    docs = TextFiles(paths=(SHAKESPEARE_TEXTS,)).documents(0, 1)
    while len(tokens) < needed:
        chunk = [next(docs) for _ in range(256)]
        for ids in tokenizer.encode_batch(chunk):
            tokens.extend([*ids, tokenizer.eos_id])
    return torch.tensor(tokens[:needed]).view(steps, BATCH, SEQ_LEN)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("xla", "eager"), default="xla")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--metrics", help="also write a JSON row per logged step here")
    args = parser.parse_args()
    launch = float(os.environ.get("BENCH_LAUNCH_TIME", time.time()))
    dtype = getattr(torch, args.dtype)
    data = batches(args.steps)
    torch.manual_seed(0)
    if args.device == "xla":
        import torch_xla
        import torch_xla.core.xla_model as xm
        import torch_xla.debug.metrics as met

        device = torch_xla.device()
    else:
        device = torch.device("cpu")
    torch.set_default_dtype(dtype)
    # The model hyper-parameters are llama_tiny's; everything else is hand-written.
    model_config = fdl.build(build_config("llama_tiny").model.config)
    model = LlamaForCausalLM(model_config).to(device)
    torch.set_default_dtype(torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95))
    windows, first_step_done = [], None
    last = time.perf_counter()
    for step in range(1, args.steps + 1):
        ids = data[step - 1].to(device)
        loss = model(ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if args.device == "xla":
            torch_xla.sync()
        if step == 1 or step % LOG_EVERY == 0:
            value = loss.item()  # wait for the step, as a logging loop does
            now = time.perf_counter()
            if args.metrics:  # read by benchmarks.step_time for the CPU time between steps
                with open(args.metrics, "a") as rows:
                    rows.write(json.dumps({"step": step, "loss": value, "timestamp": time.time()}))
                    rows.write("\n")
            windows.append((step, (now - last) / (1 if step == 1 else LOG_EVERY)))
            last = now
            if step == 1:
                first_step_done = time.time() - launch
    result = {
        "device": args.device,
        "dtype": args.dtype,
        "windows": windows,
        "steady_step_s": float(np.median([t for s, t in windows if s > LOG_EVERY])),
        "first_step_s": first_step_done,
    }
    if args.device == "xla":
        xm.wait_device_ops()
        result["compiles"] = int(met.counter_value("UncachedCompile") or 0)
        result["compile_s"] = met.metric_data("CompileTime")[1] / 1e9
    print(json.dumps(result))


if __name__ == "__main__":
    main()
