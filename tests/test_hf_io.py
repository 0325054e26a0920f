"""Hugging Face weights in and out, against real ``transformers`` on the XLA CPU backend.

Checkpoints are tiny random ``transformers.LlamaForCausalLM`` models saved locally
(no hub). The 8-device test runs in a subprocess: the SPMD runtime is per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch_xla
import transformers
from conftest import ROOT

from xlafw.models import LlamaForCausalLM
from xlafw.models.hf_io import (
    HfCheckpointError,
    load_hf_weights,
    read_hf_config,
    save_hf_weights,
)
from xlafw.models.llama import FAMILY as LLAMA

TINY = dict(
    vocab_size=1000,
    hidden_size=64,
    intermediate_size=172,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rope_theta=500000.0,
    rope_scaling={
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    },
)
ATOL = RTOL = 1e-5


def _save_hf(directory, tie_word_embeddings=False, max_shard_size="100KB", **changes):
    """Saves a random HF Llama (several files by default) and returns it."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        **{**TINY, **changes}, tie_word_embeddings=tie_word_embeddings
    )
    hf = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # HF inits norms to 1: make them count in the comparison
        for name, param in hf.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    hf.save_pretrained(directory, safe_serialization=True, max_shard_size=max_shard_size)
    return hf


def _xla_model(config_json):
    torch.manual_seed(1)  # different from the checkpoint's values
    with torch_xla.device():
        return LlamaForCausalLM(LLAMA.from_hf_config(config_json)).eval()


def _config_json(directory):
    with open(directory / "config.json") as f:
        return json.load(f)


def _ids():
    return torch.randint(0, TINY["vocab_size"], (2, 40), generator=torch.Generator().manual_seed(2))


def _xla_logits(model):
    with torch.no_grad():
        return model(_ids().to(torch_xla.device())).logits.cpu()


def _hf_logits(hf):
    with torch.no_grad():
        return hf(_ids()).logits.float()


def test_imported_weights_give_transformers_logits_on_the_xla_device(tmp_path):
    hf = _save_hf(tmp_path)
    assert (tmp_path / "model.safetensors.index.json").exists()  # several files
    model = _xla_model(_config_json(tmp_path))
    loaded = load_hf_weights(model, tmp_path)
    assert loaded.num_tensors == 21 and len(loaded.files) > 1
    torch.testing.assert_close(_xla_logits(model), _hf_logits(hf), atol=ATOL, rtol=RTOL)


def test_exported_weights_load_in_transformers_with_equal_logits(tmp_path):
    _save_hf(tmp_path / "hf")
    model = _xla_model(_config_json(tmp_path / "hf"))
    load_hf_weights(model, tmp_path / "hf")
    saved = save_hf_weights(model, tmp_path / "out", max_shard_bytes=200_000)
    n = len(saved.files)
    assert n > 1 and saved.files == tuple(
        f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)
    )
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()
    reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(_hf_logits(reloaded), _xla_logits(model), atol=ATOL, rtol=RTOL)


def test_export_then_import_reproduces_the_config_and_state_dict(tmp_path):
    source = _xla_model({**TINY, "rms_norm_eps": 1e-5})
    save_hf_weights(source, tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors"]
    target = _xla_model(_config_json(tmp_path / "out"))
    assert target.config == source.config
    with torch.no_grad():
        for param in target.parameters():
            param.zero_()
    load_hf_weights(target, tmp_path / "out")
    expected = {k: v.cpu() for k, v in source.state_dict().items()}
    for name, value in target.state_dict().items():
        assert torch.equal(value.cpu(), expected[name]), name


def test_tied_checkpoint_fills_the_lm_head_from_the_embedding(tmp_path):
    hf = _save_hf(tmp_path, tie_word_embeddings=True, max_shard_size="5GB")
    model = _xla_model(_config_json(tmp_path))
    loaded = load_hf_weights(model, tmp_path)
    assert loaded.lm_head_from_embedding
    torch.testing.assert_close(_xla_logits(model), _hf_logits(hf), atol=ATOL, rtol=RTOL)


def _rewrite_single_file(directory, edit):
    """Applies ``edit`` to the tensors of a one-file checkpoint."""
    from safetensors.torch import load_file, save_file

    path = directory / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_missing_tensor_and_shape_mismatch_are_all_named(tmp_path):
    _save_hf(tmp_path, max_shard_size="5GB")
    model = _xla_model(_config_json(tmp_path))

    def edit(tensors):
        del tensors["model.layers.1.mlp.up_proj.weight"]
        tensors["model.norm.weight"] = torch.ones(32)
        tensors["model.layers.9.mlp.up_proj.weight"] = torch.ones(2)

    _rewrite_single_file(tmp_path, edit)
    with pytest.raises(HfCheckpointError) as error:
        load_hf_weights(model, tmp_path)
    message = str(error.value)
    assert "3 problems" in message
    assert "missing tensor model.layers.1.mlp.up_proj.weight (expected shape [172, 64])" in message
    assert "model.safetensors: model.norm.weight has shape [32], the model expects [64]" in message
    assert "unexpected tensor model.layers.9.mlp.up_proj.weight" in message


def test_architecture_mismatch_is_refused_before_any_copy(tmp_path):
    _save_hf(tmp_path)
    config_json = _config_json(tmp_path)
    model = _xla_model({**config_json, "rms_norm_eps": 1e-5})
    before = model.lm_head.weight.cpu()
    with pytest.raises(HfCheckpointError, match=r"rms_norm_eps: model 1e-05, checkpoint 1e-06"):
        load_hf_weights(model, tmp_path)
    assert torch.equal(model.lm_head.weight.cpu(), before)


def test_a_directory_without_safetensors_is_named_with_its_contents(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(HfCheckpointError, match=r"neither model.safetensors .*pytorch_model.bin"):
        load_hf_weights(_xla_model({**TINY}), tmp_path)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: None, "no config.json there"),
        (lambda d: (d / "config.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "config.json").write_bytes(b"\xff\xfe\x00"), "not valid JSON"),
        (lambda d: (d / "config.json").mkdir(), "cannot be read"),
    ],
)
def test_an_unreadable_config_json_is_one_checkpoint_error(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(HfCheckpointError, match=message):
        read_hf_config(tmp_path)


def test_transformers_4_config_layout_maps_like_version_5():
    v4 = {**TINY, "rms_norm_eps": 1e-5}
    v5 = {k: v for k, v in v4.items() if k not in ("rope_theta", "rope_scaling")}
    v5["rope_parameters"] = {**TINY["rope_scaling"], "rope_theta": 500000.0}
    config = LLAMA.from_hf_config(v4)
    assert config == LLAMA.from_hf_config(v5)
    assert config.rope_scaling.original_max_position_embeddings == 16
    assert config.head_dim is None and config.rms_norm_eps == 1e-5


def test_unsupported_rope_and_biases_are_refused_with_reasons():
    config = {**TINY, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}
    with pytest.raises(HfCheckpointError, match="rope type 'yarn' is not supported"):
        LLAMA.from_hf_config(config)
    with pytest.raises(HfCheckpointError, match="attention_bias is true"):
        LLAMA.from_hf_config({**TINY, "attention_bias": True})


def test_save_refuses_a_non_empty_directory_and_leaves_no_temporary(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        save_hf_weights(_xla_model({**TINY}), tmp_path / "out")
    save_hf_weights(_xla_model({**TINY}), tmp_path / "new")
    assert sorted(os.listdir(tmp_path)) == ["new", "out"]


SHARDED_PROBE = textwrap.dedent(
    """
    import json, sys, types
    from pathlib import Path
    import torch, torch_xla, transformers
    from xlafw import runtime
    from xlafw.models import LlamaForCausalLM
    from xlafw.models.hf_io import load_hf_weights, save_hf_weights
    from xlafw.models.llama import FAMILY as LLAMA
    from xlafw.parallel import Mesh, apply
    from xlafw.parallel.mesh import AxisSizes
    from xlafw.models.llama import LLAMA_FSDP_TP

    hf_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    rt = runtime.start(spmd=True)
    config = LLAMA.from_hf_config(json.loads((hf_dir / "config.json").read_text()))
    with rt.device:  # the trainer's stages 6-8, as in experiments.llama_tiny_spmd
        model = LlamaForCausalLM(config).eval()
    apply.patch_linears(model, rt)
    exp = types.SimpleNamespace(mesh=Mesh(ici=AxisSizes(fsdp=4, tensor=2)), sharding=LLAMA_FSDP_TP)
    apply.shard(model, exp, rt)
    spec = torch_xla._XLAC._get_xla_sharding_spec
    before = {n: spec(p) for n, p in model.named_parameters()}
    loaded = load_hf_weights(model, hf_dir)
    torch_xla.sync()
    after = {n: spec(p) for n, p in model.named_parameters()}
    ids = torch.randint(0, config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model(ids.to(rt.device)).logits.cpu()
        hf = transformers.LlamaForCausalLM.from_pretrained(hf_dir).eval()
        theirs = hf(ids).logits.float()
    save_hf_weights(model, out_dir, max_shard_bytes=200_000)
    with torch.no_grad():
        exported = transformers.LlamaForCausalLM.from_pretrained(out_dir).eval()(ids).logits
    print("RESULT " + json.dumps({
        "devices": rt.num_devices,
        "num_sharded": loaded.num_sharded,
        "before": before,
        "after": after,
        "import_diff": (ours - theirs).abs().max().item(),
        "export_diff": (exported.float() - theirs).abs().max().item(),
    }))
    """
)


def test_sharded_8_device_import_keeps_shardings_and_matches_transformers(tmp_path):
    # 1001 rows split 4 (embedding) and 2 (LM head) ways: uneven, padded shards.
    _save_hf(tmp_path / "hf", vocab_size=1001)
    proc = subprocess.run(
        [sys.executable, "-c", SHARDED_PROBE, str(tmp_path / "hf"), str(tmp_path / "out")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "CPU_NUM_DEVICES": "8", "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    assert result["devices"] == 8
    assert result["after"] == result["before"]
    # Every parameter is split by LLAMA_FSDP_TP, so every one was read shard by shard.
    assert result["num_sharded"] == 21
    assert result["before"]["model.layers.0.self_attn.q_proj.weight"].startswith("{devices=[2,4]")
    assert "last_tile_dim_replicate" in result["before"]["model.norm.weight"]
    assert result["before"]["lm_head.weight"].startswith("{devices=[2,4]")
    assert result["import_diff"] <= ATOL and result["export_diff"] <= ATOL, result


def test_training_starts_from_hf_weights_and_validation_checks_the_shape(tmp_path, xlafw_cli):
    hf_config = transformers.LlamaConfig(
        vocab_size=32000,
        hidden_size=64,
        intermediate_size=172,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        tie_word_embeddings=False,
        max_position_embeddings=2048,
    )
    transformers.LlamaForCausalLM(hf_config).save_pretrained(tmp_path / "hf")
    run = xlafw_cli(
        "--fdl_config=llama_tiny_smoke",
        "--fdl.trainer.max_steps=2",
        f"--fdl.trainer.init_from_hf={tmp_path / 'hf'}",
        f"--fdl.trainer.run_dir={tmp_path / 'run'}",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "loaded 21 tensors" in run.stdout  # the load summary is logged
    wrong = xlafw_cli(
        "--fdl_config=llama_tiny_smoke",
        "--fdl.model.config.num_hidden_layers=3",
        f"--fdl.trainer.init_from_hf={tmp_path / 'hf'}",
    )
    assert wrong.returncode == 2
    assert "--fdl_set=model.config.num_hidden_layers=2" in wrong.stderr
