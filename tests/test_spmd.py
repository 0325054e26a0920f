"""SPMD on 8 virtual CPU devices (each test in its own process: the runtime is per process)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from conftest import ROOT, SMALL_MODEL

SMALL = (
    *SMALL_MODEL,
    "--fdl.data.seq_len=64",
    "--fdl.trainer.max_steps=12",
    "--fdl.trainer.log_every=1",
)


def _losses(run_dir):
    with open(run_dir / "metrics.jsonl") as f:
        return [r for r in map(json.loads, f) if "loss" in r]  # training steps, not evals


def test_fsdp_tp_run_matches_single_device_losses(xlafw_cli, tmp_path):
    spmd = xlafw_cli(
        "--fdl_config=llama_tiny_spmd",
        *SMALL,
        f"--fdl.trainer.run_dir={tmp_path / 'spmd'}",
        env={"CPU_NUM_DEVICES": "8"},
    )
    assert spmd.returncode == 0, spmd.stderr[-3000:]
    assert "mesh {'data': 1, 'fsdp': 4, 'tensor': 2" in spmd.stdout
    single = xlafw_cli(
        "--fdl_config=llama_tiny_spmd",
        *SMALL,
        f"--fdl.trainer.run_dir={tmp_path / 'one'}",
        "--fdl.mesh.ici.fsdp=1",
        "--fdl.mesh.ici.tensor=1",
    )
    assert single.returncode == 0, single.stderr[-3000:]
    a, b = _losses(tmp_path / "spmd"), _losses(tmp_path / "one")
    assert len(a) == len(b) == 12
    for x, y in zip(a, b, strict=False):
        assert abs(x["loss"] - y["loss"]) <= 1e-4 * abs(y["loss"]), (
            x["step"],
            x["loss"],
            y["loss"],
        )
    # No compilation after step 2 in the sharded run either.
    assert a[-1]["compiles"] == a[1]["compiles"]


PROBE = textwrap.dedent(
    """
    import sys
    import fiddle as fdl
    import torch_xla
    from xlafw.config import build_config
    from xlafw.trainer import Trainer
    cfg = build_config("llama_tiny_spmd", sets=sys.argv[1:])
    trainer = Trainer(fdl.build(cfg), cfg)
    trainer.setup()
    batch = next(iter(trainer.data))
    batch = {k: v.to(trainer.rt.device) for k, v in batch.items()}
    trainer.train_step(batch)
    torch_xla.sync()
    q = trainer.model.model.layers[0].self_attn.q_proj.weight
    spec = torch_xla._XLAC._get_xla_sharding_spec
    print("PARAM", spec(q))
    print("STATE", spec(trainer.optimizer.state[q]["exp_avg"]))
    print("EMBED", spec(trainer.model.model.embed_tokens.weight))
    """
)


def test_q_projection_and_its_adamw_state_are_sharded_as_the_rules_say(tmp_path):
    sets = [s.removeprefix("--fdl.") for s in SMALL]
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *sets],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "CPU_NUM_DEVICES": "8"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(
        line.split(" ", 1)
        for line in proc.stdout.splitlines()
        if line[:5] in ("PARAM", "STATE", "EMBED")
    )
    # q_proj [tensor, fsdp] on (fsdp=4, tensor=2): 2 tiles on dim 0, 4 on dim 1.
    assert lines["PARAM"].startswith("{devices=[2,4]"), lines
    assert lines["STATE"] == lines["PARAM"]
    # embedding [fsdp, tensor]: 4 tiles on rows, 2 on columns.
    assert lines["EMBED"].startswith("{devices=[4,2]"), lines
