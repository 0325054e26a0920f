"""Mixtral with expert parallelism on 8 virtual devices: the same losses as on one device.

One 1-device run of ``mixtral_tiny`` through the CLI and one 8-device run of
``mixtral_tiny_ep`` (expert 4 x fsdp 2) through the trainer in a process of its
own (the device count is fixed per process), 12 steps each, logging every step.
The 8-device worker also imports a Hugging Face Mixtral with
``load_pretrained(mesh=...)`` under the expert-parallel rules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import transformers
from conftest import ROOT

STEPS = 12
SETS = [
    # mixtral_tiny shrunk (same experts and routing) so both runs take seconds per step.
    "model.config.hidden_size=64",
    "model.config.intermediate_size=128",
    "model.config.num_hidden_layers=2",
    "model.config.num_attention_heads=4",
    f"trainer.max_steps={STEPS}",
    "trainer.log_every=1",
    "eval.every_steps=0",
    "metrics.on_recompile=error",
]

WORKER = r"""
import json, sys
import fiddle as fdl
import torch, torch_xla
import torch_xla.distributed.spmd as xs
from xlafw.config import build_config, validate
from xlafw.models import load_pretrained
from xlafw.trainer import Trainer, setup_logging

run_dir, hf_dir = sys.argv[1], sys.argv[2]
sets = json.loads(sys.argv[3]) + [f"trainer.run_dir={run_dir}"]
cfg = build_config("mixtral_tiny_ep", sets=sets)
plan = validate(cfg)
setup_logging()
trainer = Trainer(fdl.build(cfg), cfg, plan=plan)
trainer.setup()
history = trainer.train()
param = dict(trainer.model.named_parameters())["model.layers.0.block_sparse_moe.experts.w1"]
spec = torch_xla._XLAC._get_xla_sharding_spec(param)
shards = xs.wrap_if_sharded(param).local_shards
result = {
    "losses": [m.loss for m in history],
    "compiles": [m.compiles for m in history],
    "expert_spec": spec,
    "expert_shard_shape": list(shards[0].data.shape),
    "global_shape": list(param.shape),
}
mesh = xs.get_global_mesh()
model = load_pretrained(hf_dir, mesh=mesh, rules="ep")
ids = torch.arange(32).view(2, 16) % 128
with torch.no_grad():
    logits = model(ids.to(torch_xla.device())).logits.cpu()
loaded = dict(model.named_parameters())["model.layers.1.block_sparse_moe.experts.w2"]
result["loaded_spec"] = torch_xla._XLAC._get_xla_sharding_spec(loaded)
torch.save(logits, f"{run_dir}/hf_logits.pt")
print("RESULT " + json.dumps(result))
"""


def _losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [r["loss"] for r in records if "loss" in r]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("moe")
    env = {**os.environ, "PJRT_DEVICE": "CPU"}
    one = tmp / "one"
    cli = [sys.executable, "-m", "xlafw.main", "--fdl_config=mixtral_tiny"]
    cli += [f"--fdl_set={s}" for s in [*SETS, f"trainer.run_dir={one}"]]
    proc = subprocess.run(
        cli, cwd=ROOT, env={**env, "CPU_NUM_DEVICES": "1"}, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]

    torch.manual_seed(0)
    hf_config = transformers.MixtralConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        tie_word_embeddings=False,
    )
    hf = transformers.MixtralForCausalLM(hf_config).eval()
    hf.save_pretrained(tmp / "hf")
    with torch.no_grad():
        expected = hf(torch.arange(32).view(2, 16) % 128).logits

    eight = tmp / "eight"
    eight.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, str(eight), str(tmp / "hf"), json.dumps(SETS)],
        cwd=ROOT,
        env={**env, "CPU_NUM_DEVICES": "8"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    result["hf_error"] = (torch.load(eight / "hf_logits.pt") - expected).abs().max().item()
    return _losses(one), result


def test_expert_parallel_losses_match_one_device(runs):
    one, result = runs
    eight = result["losses"]
    assert len(one) == len(eight) == STEPS
    for a, b in zip(one, eight, strict=True):
        assert abs(a - b) <= 1e-4 * abs(a), (one, eight)
    assert one[-1] < one[0]  # it trains


def test_expert_parallel_step_compiles_once(runs):
    _, result = runs
    compiles = result["compiles"]
    assert compiles[2] == compiles[-1], compiles  # no recompilation after warm-up


def test_expert_weights_are_split_over_the_expert_axis(runs):
    _, result = runs
    experts = result["global_shape"][0]
    # expert 4 x fsdp 2: each device holds a quarter of the experts.
    assert result["expert_shard_shape"][0] == experts // 4, result
    assert "devices=" in result["expert_spec"], result["expert_spec"]
    assert "devices=" in result["loaded_spec"], result["loaded_spec"]


def test_load_pretrained_on_a_mesh_matches_transformers(runs):
    _, result = runs
    assert result["hf_error"] <= 1e-4
