"""``metrics.png``: loss (train and eval) and throughput against step."""

from __future__ import annotations

import io
import json

from xlafw import storage


def plot(jsonl_path: str, png_path: str) -> None:
    """Draws loss and throughput against step from a metrics file into a PNG.

    Both paths may be local or fsspec URLs; the PNG is written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in storage.path(jsonl_path).read_text().splitlines()]
    rows = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    if not rows:
        return
    steps = [r["step"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot(steps, [r["loss"] for r in rows], label="train")
    if evals:
        top.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval")
        top.legend()
    top.set_ylabel("loss")
    top.grid(alpha=0.3)
    bottom.plot(steps, [r["tokens_per_s"] for r in rows])
    bottom.set_ylabel("tokens/s")
    bottom.set_xlabel("step")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    png = io.BytesIO()  # savefig writes local files only; storage writes anywhere
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    storage.write_bytes(png_path, png.getvalue())
