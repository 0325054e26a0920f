"""How long a checkpoint save holds the step loop: synchronous vs async, local vs GCS.

Run from the repository root on an otherwise idle machine:

    PY=$(make -s python-path)
    $PY -m benchmarks.checkpoint_save --model tiny --store local
    $PY -m benchmarks.checkpoint_save --model 300m --store gcs

It builds the experiment's trainer (model, optimizer state, sharding) on the
XLA CPU backend, then saves the full state ``--saves`` times in each mode with
xlafw's CheckpointManager. "held" is what the step loop waits for: the whole
save when synchronous; the copy to host memory when async. "committed" is the
time until the marker is written (for async: held plus the background write,
waited for at once so that nothing else competes for the two cores). Restore
is timed once, from the newest checkpoint. ``--store gcs`` starts a real GCS
server (fake-gcs-server) on 127.0.0.1 and writes to ``gs://``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from gcs_server import IMPORT_TIME_ENV, running_gcs_server  # the server the tests start

SIZES = {
    # llama_tiny as it trains by default.
    "tiny": [],
    # ~300M parameters: 20 layers of width 1024, a 32k vocabulary, untied.
    "300m": [
        "model.config.hidden_size=1024",
        "model.config.intermediate_size=2816",
        "model.config.num_hidden_layers=20",
        "model.config.num_attention_heads=16",
        "model.config.num_key_value_heads=8",
        "data.seq_len=64",
    ],
}


@contextlib.contextmanager
def _store(kind: str):
    """Yields the run directory: a local temporary one, or a bucket on a local GCS server."""
    if kind == "local":
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as directory:
            yield directory
        return
    with running_gcs_server() as server:
        yield f"{server.new_bucket()}/run"


def main() -> None:
    os.environ.update(IMPORT_TIME_ENV)  # before anything imports gcsfs
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--store", choices=["local", "gcs"], default="local")
    parser.add_argument("--saves", type=int, default=3)
    args = parser.parse_args()

    import fiddle as fdl

    from xlafw.config import build_config
    from xlafw.trainer import Trainer, setup_logging

    setup_logging()
    with _store(args.store) as run_dir:
        cfg = build_config("llama_tiny", sets=[*SIZES[args.model], f"trainer.run_dir={run_dir}"])
        trainer = Trainer(fdl.build(cfg), cfg)
        trainer.setup()
        manager = trainer.checkpoints
        state_bytes = sum(
            t.numel() * t.element_size()
            for t in [*trainer.model.state_dict().values()]
            + [v for s in trainer.optimizer.state.values() for v in s.values()]
        )
        rows = []
        step = 0
        for mode in ("sync", "async"):
            manager.async_save = mode == "async"
            held, committed = [], []
            for _ in range(args.saves):
                step += 1
                start = time.perf_counter()
                trainer._save(step)
                held.append(time.perf_counter() - start)
                manager.wait()
                committed.append(time.perf_counter() - start)
            rows.append((mode, statistics.median(held), statistics.median(committed)))
        start = time.perf_counter()
        state = {"model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict()}
        manager.restore_state(step, state)
        restore_s = time.perf_counter() - start
        manager.close()

    print(
        f"\nllama_tiny {args.model}: {trainer.num_parameters / 1e6:.1f}M parameters, "
        f"{state_bytes / 2**20:.0f} MiB of state (model + AdamW), store {args.store}, "
        f"median of {args.saves} saves"
    )
    print(f"{'mode':<6} {'held s':>8} {'committed s':>12} {'held / sync':>12}")
    sync_held = rows[0][1]
    for mode, held_s, committed_s in rows:
        print(f"{mode:<6} {held_s:>8.3f} {committed_s:>12.3f} {held_s / sync_held:>12.2f}")
    print(f"restore {restore_s:.3f} s")


if __name__ == "__main__":
    main()
