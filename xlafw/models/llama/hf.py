"""Hugging Face ``LlamaForCausalLM`` ``config.json`` <-> ``LlamaConfig`` (pure Python).

HF defaults differ from xlafw's: a ``config.json`` without ``rms_norm_eps``
means 1e-6 (ours is 1e-5) and one without ``rope_theta`` means 10000 (ours is
500000), so absent keys get HF's defaults, never ours.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from xlafw.models.hf_config import HfCheckpointError, rope_from_hf, rope_to_hf
from xlafw.models.llama.model import LlamaConfig

# transformers' LlamaConfig defaults for keys a config.json may omit.
HF_DEFAULTS = {
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 2048,
    "initializer_range": 0.02,
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
}
REQUIRED = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
)
# Fields that change the computation; the rest (max_position_embeddings,
# initializer_range, attention_kernel) can differ between a model and its weights.
ARCHITECTURE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "resolved_head_dim",
    "rope_theta",
    "rope_scaling",
    "rms_norm_eps",
    "is_causal",
)


def unsupported(
    config_json: Mapping[str, Any], model_type: str, defaults: Mapping[str, Any]
) -> list[str]:
    """What in a Llama-like ``config.json`` xlafw cannot represent (shared with Mixtral)."""
    values = {**defaults, **config_json}
    problems = []
    if config_json.get("model_type", model_type) != model_type:
        problems.append(f"model_type is {config_json['model_type']!r}, not {model_type!r}")
    problems += [f"{key} is missing" for key in REQUIRED if key not in config_json]
    if values.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act is {values['hidden_act']!r}; xlafw's MLP is SwiGLU ('silu')")
    problems += [
        f"{key} is true; xlafw's models have no biases"
        for key in ("attention_bias", "mlp_bias")
        if values.get(key)
    ]
    return problems


def attention_fields(config_json: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict:
    """The ``LlamaConfig`` fields every Llama-like family reads the same way."""
    values = {**defaults, **config_json}
    theta, scaling = rope_from_hf(config_json, defaults["rope_theta"])
    heads = config_json["num_attention_heads"]
    head_dim = config_json.get("head_dim")
    return dict(
        vocab_size=config_json["vocab_size"],
        hidden_size=config_json["hidden_size"],
        intermediate_size=config_json["intermediate_size"],
        num_hidden_layers=config_json["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=config_json.get("num_key_value_heads") or heads,
        head_dim=None if head_dim in (None, config_json["hidden_size"] // heads) else head_dim,
        max_position_embeddings=values["max_position_embeddings"],
        rope_theta=theta,
        rope_scaling=scaling,
        rms_norm_eps=float(values["rms_norm_eps"]),
        initializer_range=float(values["initializer_range"]),
    )


def attention_hf_fields(config: LlamaConfig, dtype: str) -> dict[str, Any]:
    """The ``config.json`` keys every Llama-like family writes the same way.

    Raises:
      HfCheckpointError: for a bidirectional model (HF's causal LMs are causal).
    """
    if not config.is_causal:
        raise HfCheckpointError(
            "a bidirectional (is_causal=False) model has no HF causal-LM layout"
        )
    return {
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.resolved_head_dim,
        "max_position_embeddings": config.max_position_embeddings,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "initializer_range": config.initializer_range,
        "attention_bias": False,
        "tie_word_embeddings": False,
        **rope_to_hf(config.rope_theta, config.rope_scaling),
        "torch_dtype": dtype,
        "dtype": dtype,
    }


def from_hf_config(config_json: Mapping[str, Any]) -> LlamaConfig:
    """Maps a Hugging Face Llama ``config.json`` to xlafw's ``LlamaConfig``.

    ``tie_word_embeddings`` has no counterpart: xlafw's LM head is always its
    own parameter, and ``load_hf_weights`` fills it from the embedding when a
    tied checkpoint has no ``lm_head.weight``.

    Returns:
      The equivalent config (``head_dim`` is None when it equals
      ``hidden_size // num_attention_heads``, as in xlafw's experiments).

    Raises:
      HfCheckpointError: for a non-Llama model, missing sizes, biases, an
        activation other than SiLU or a RoPE type other than default/llama3.

    Example:
      >>> from_hf_config(json.load(open("Llama-3.1-8B/config.json")))
      LlamaConfig(vocab_size=128256, hidden_size=4096, ...)
    """
    problems = unsupported(config_json, "llama", HF_DEFAULTS)
    if problems:
        raise HfCheckpointError(
            "cannot map this config.json to LlamaConfig: " + "; ".join(problems)
        )
    return LlamaConfig(**attention_fields(config_json, HF_DEFAULTS))


def to_hf_config(config: LlamaConfig, dtype: str = "float32") -> dict[str, Any]:
    """Returns the ``config.json`` of a ``transformers`` ``LlamaForCausalLM``.

    Args:
      config: xlafw's config.
      dtype: the stored weights' dtype name (``float32``, ``bfloat16``).

    Raises:
      HfCheckpointError: for a bidirectional model (HF's Llama is causal).
    """
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **attention_hf_fields(config, dtype),
        "mlp_bias": False,
    }
