"""Hugging Face ``config.json`` <-> ``LlamaConfig`` (pure Python: no torch_xla).

Both layouts of RoPE settings that ``transformers`` has written are read:
version 4 puts ``rope_theta`` at the top level and the scaling in
``rope_scaling``; version 5 puts both in ``rope_parameters``. Exports write
both, so either version (and tools that only know version 4) reads them.

HF defaults differ from xlafw's: a ``config.json`` without ``rms_norm_eps``
means 1e-6 (ours is 1e-5) and one without ``rope_theta`` means 10000 (ours is
500000), so absent keys get HF's defaults, never ours.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from xlafw.models.llama import LlamaConfig
from xlafw.models.rope import Llama3RopeScaling

# transformers' LlamaConfig defaults for keys a config.json may omit.
_HF_DEFAULTS = {
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 2048,
    "initializer_range": 0.02,
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
}
_REQUIRED = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
)
_MUST_BE_FALSE = ("attention_bias", "mlp_bias")
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


class HfCheckpointError(ValueError):
    """A Hugging Face checkpoint does not fit the model; the message lists every problem."""


def remote_checkpoint_problem(directory: str | os.PathLike) -> str | None:
    """Why a checkpoint directory cannot be loaded from where it is, or None.

    Loading reads local directories only: ``safetensors.safe_open`` memory-maps
    a local file (so a host reads only its shards' bytes) and cannot open a
    ``gs://`` URL. Exports may go to a bucket (``save_hf_weights``).
    """
    text = os.fspath(directory)
    if "://" not in text:
        return None
    local = text.rstrip("/").rsplit("/", 1)[-1] or "checkpoint"
    return (
        f"{text}: Hugging Face weights load from a local directory only (safetensors "
        f"memory-maps local files). Fix: copy it to local disk first, e.g. "
        f"`gcloud storage cp -r {text} /tmp/` and point to /tmp/{local}."
    )


def _rope(config_json: dict[str, Any]) -> tuple[float, Llama3RopeScaling | None]:
    params = config_json.get("rope_parameters") or config_json.get("rope_scaling") or {}
    theta = config_json.get("rope_theta", params.get("rope_theta", _HF_DEFAULTS["rope_theta"]))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return float(theta), None
    if rope_type != "llama3":
        raise HfCheckpointError(
            f"rope type {rope_type!r} is not supported; xlafw implements plain RoPE "
            f"('default') and Llama 3.1 scaling ('llama3'). The config has {params}."
        )
    defaults = Llama3RopeScaling()
    scaling = Llama3RopeScaling(
        factor=float(params.get("factor", defaults.factor)),
        low_freq_factor=float(params.get("low_freq_factor", defaults.low_freq_factor)),
        high_freq_factor=float(params.get("high_freq_factor", defaults.high_freq_factor)),
        original_max_position_embeddings=int(
            params.get(
                "original_max_position_embeddings", defaults.original_max_position_embeddings
            )
        ),
    )
    return float(theta), scaling


def hf_config_to_llama_config(config_json: dict[str, Any]) -> LlamaConfig:
    """Maps a Hugging Face Llama ``config.json`` to xlafw's ``LlamaConfig``.

    ``tie_word_embeddings`` has no counterpart: xlafw's LM head is always its
    own parameter, and ``load_hf_weights`` fills it from the embedding when a
    tied checkpoint has no ``lm_head.weight``.

    Args:
      config_json: the parsed ``config.json``.

    Returns:
      The equivalent config (``head_dim`` is None when it equals
      ``hidden_size // num_attention_heads``, as in xlafw's experiments).

    Raises:
      HfCheckpointError: for a non-Llama model, missing sizes, biases, an
        activation other than SiLU or a RoPE type other than default/llama3.

    Example:
      >>> hf_config_to_llama_config(json.load(open("Llama-3.1-8B/config.json")))
      LlamaConfig(vocab_size=128256, hidden_size=4096, ...)
    """
    values = {**_HF_DEFAULTS, **config_json}
    problems = []
    if config_json.get("model_type", "llama") != "llama":
        problems.append(f"model_type is {config_json['model_type']!r}, not 'llama'")
    problems += [f"{key} is missing" for key in _REQUIRED if key not in config_json]
    if values["hidden_act"] != "silu":
        problems.append(f"hidden_act is {values['hidden_act']!r}; xlafw's MLP is SwiGLU ('silu')")
    problems += [
        f"{key} is true; xlafw's Llama has no biases" for key in _MUST_BE_FALSE if values[key]
    ]
    if problems:
        raise HfCheckpointError(
            "cannot map this config.json to LlamaConfig: " + "; ".join(problems)
        )
    theta, scaling = _rope(config_json)
    heads = config_json["num_attention_heads"]
    head_dim = config_json.get("head_dim")
    return LlamaConfig(
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


def llama_config_to_hf_config(config: LlamaConfig, dtype: str = "float32") -> dict[str, Any]:
    """Returns the ``config.json`` of a ``transformers`` ``LlamaForCausalLM``.

    Args:
      config: xlafw's config.
      dtype: the stored weights' dtype name (``float32``, ``bfloat16``).

    Raises:
      HfCheckpointError: for a bidirectional model (HF's Llama is causal).
    """
    if not config.is_causal:
        raise HfCheckpointError("a bidirectional (is_causal=False) model has no HF Llama layout")
    rope: dict[str, Any] = {"rope_type": "default"}
    if config.rope_scaling is not None:
        rope = {"rope_type": "llama3", **dataclasses.asdict(config.rope_scaling)}
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
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
        "mlp_bias": False,
        "tie_word_embeddings": False,
        # transformers 4 reads these two ...
        "rope_theta": config.rope_theta,
        "rope_scaling": rope if config.rope_scaling is not None else None,
        # ... and transformers 5 this one.
        "rope_parameters": {**rope, "rope_theta": config.rope_theta},
        "torch_dtype": dtype,
        "dtype": dtype,
    }


def architecture_differences(model: LlamaConfig, checkpoint: LlamaConfig) -> list[str]:
    """Lists ``field: model X, checkpoint Y`` for every architecture field that differs."""
    return [
        f"{field}: model {getattr(model, field)!r}, checkpoint {getattr(checkpoint, field)!r}"
        for field in ARCHITECTURE_FIELDS
        if getattr(model, field) != getattr(checkpoint, field)
    ]
