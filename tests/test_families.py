"""The model-family seam: every family is found, planned, validated and loaded the same way.

These tests name no family's internals beyond building a tiny config, so a new
family under ``xlafw/models/`` is covered by adding it to ``TINY``.
"""

from __future__ import annotations

import json

import fiddle as fdl
import pytest
import torch
import transformers

from xlafw.config import ConfigError, build_config, validate
from xlafw.models import families, family_of, load_pretrained
from xlafw.models.hf_config import HfCheckpointError
from xlafw.models.hf_io import save_hf_weights
from xlafw.parallel.sharding import check_rules

ATTENTION = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
TINY = {
    "llama": (transformers.LlamaConfig, {}),
    "mixtral": (transformers.MixtralConfig, dict(num_local_experts=4, num_experts_per_tok=2)),
}


def test_every_family_is_found_and_covered_here():
    assert set(families()) == set(TINY)
    for name, family in families().items():
        assert family.name == name
        assert family_of(family.config_class) is family is family_of(family.model_class)


def _hf_model(name: str, seed: int = 0):
    hf_class, extra = TINY[name]
    torch.manual_seed(seed)
    config = hf_class(**ATTENTION, **extra, rms_norm_eps=1e-5, tie_word_embeddings=False)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_stock_rule_set_covers_every_parameter(name):
    family = families()[name]
    hf = _hf_model(name)
    config = family.from_hf_config(hf.config.to_dict())
    with torch.device("meta"):
        model = family.model_class(config)
    axes = {"data": 1, "fsdp": 2, "tensor": 2, "context": 1, "expert": 2}
    for rule_set, rules in family.sharding_rules.items():
        assert check_rules(model, rules, axes) == [], rule_set


@pytest.mark.parametrize("name", sorted(TINY))
def test_load_pretrained_picks_the_family_and_export_reloads_in_transformers(name, tmp_path):
    hf = _hf_model(name)
    hf.save_pretrained(tmp_path / "hf")
    ids = torch.randint(
        0, ATTENTION["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        expected = hf(ids).logits

    model = load_pretrained(tmp_path / "hf")
    assert family_of(model).name == name
    with torch.no_grad():
        ours = model(ids).logits
    assert (ours - expected).abs().max().item() <= 1e-4

    save_hf_weights(model, tmp_path / "export")
    config_json = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config_json["model_type"] == name
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    with torch.no_grad():
        again = reloaded(ids).logits
    assert (again - expected).abs().max().item() <= 1e-4


def test_loading_another_familys_weights_is_refused_naming_both(tmp_path):
    _hf_model("mixtral").save_pretrained(tmp_path / "mixtral")
    llama = families()["llama"]
    config = llama.from_hf_config(_hf_model("llama").config.to_dict())
    from xlafw.models.hf_io import load_hf_weights

    with pytest.raises(HfCheckpointError, match=r"holds a mixtral model.*the model is llama"):
        load_hf_weights(llama.model_class(config), tmp_path / "mixtral")


def test_init_from_hf_of_another_family_is_a_config_error(tmp_path):
    _hf_model("mixtral").save_pretrained(tmp_path / "mixtral")
    cfg = build_config("llama_tiny", sets=[f"trainer.init_from_hf={tmp_path / 'mixtral'}"])
    with pytest.raises(ConfigError, match=r"holds a mixtral model \(MixtralForCausalLM\)"):
        validate(cfg)


@pytest.mark.parametrize("experiment", ["llama_tiny", "mixtral_tiny"])
def test_plan_uses_the_familys_formulas(experiment):
    cfg = build_config(experiment)
    plan = validate(cfg, purpose="plan")
    family = family_of(cfg.model)
    config = fdl.build(cfg.model.config)
    assert plan.family is family
    assert plan.flops_per_token == family.flops_per_token(config, cfg.data.seq_len)
    assert plan.active_parameters == family.active_parameters(config, plan.num_parameters)


def test_a_stack_of_one_expert_is_stored_as_that_experts_tensor(tmp_path):
    from safetensors import safe_open

    mixtral = families()["mixtral"]
    hf = _hf_model("mixtral")
    config = mixtral.from_hf_config(
        {**hf.config.to_dict(), "num_local_experts": 1, "num_experts_per_tok": 1}
    )
    model = mixtral.model_class(config)
    save_hf_weights(model, tmp_path / "one")
    name = "model.layers.0.block_sparse_moe.experts.0.w1.weight"
    with safe_open(tmp_path / "one" / "model.safetensors", "pt") as f:
        assert f.get_slice(name).get_shape() == [config.intermediate_size, config.hidden_size]
    again = load_pretrained(tmp_path / "one")
    assert torch.equal(
        again.model.layers[0].block_sparse_moe.experts.w1,
        model.model.layers[0].block_sparse_moe.experts.w1,
    )
