"""Hugging Face ``MixtralForCausalLM`` ``config.json`` <-> ``MixtralConfig`` (pure Python).

Absent keys get transformers' Mixtral defaults (``rope_theta`` 1e6,
``rms_norm_eps`` 1e-5, ``router_aux_loss_coef`` 0.001 ...), never xlafw's.

``output_router_logits`` is how transformers switches its load-balancing
loss on; xlafw always computes it and weights it by ``router_aux_loss_coef``
(0 switches it off). Exports write ``output_router_logits`` true exactly when
the coefficient is positive, so training the export in transformers optimizes
the same objective; imports read the coefficient only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from xlafw.models.hf_config import HfCheckpointError, Stacked
from xlafw.models.llama import hf as llama_hf
from xlafw.models.mixtral.model import MixtralConfig

# transformers' MixtralConfig defaults for keys a config.json may omit.
HF_DEFAULTS = {
    "rope_theta": 1e6,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 4096 * 32,
    "initializer_range": 0.02,
    "hidden_act": "silu",
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
    "router_aux_loss_coef": 0.001,
    "router_jitter_noise": 0.0,
    "sliding_window": None,
}
ARCHITECTURE_FIELDS = (*llama_hf.ARCHITECTURE_FIELDS, "num_local_experts", "num_experts_per_tok")

# xlafw's stacked expert tensors and the per-expert tensors of HF checkpoints.
_STACKED_EXPERTS = re.compile(r"^(model\.layers\.\d+\.block_sparse_moe\.experts)\.(w[123])$")


def hf_sources(name: str, shape: tuple[int, ...]) -> tuple[str, ...]:
    """HF tensor names of an xlafw parameter (one per expert for the stacked experts).

    Example:
      >>> hf_sources("model.layers.0.block_sparse_moe.experts.w1", (2, 8, 4))
      ('model.layers.0.block_sparse_moe.experts.0.w1.weight',
       'model.layers.0.block_sparse_moe.experts.1.w1.weight')
    """
    match = _STACKED_EXPERTS.match(name)
    if match is None:
        return (name,)
    prefix, weight = match.groups()
    return Stacked(f"{prefix}.{e}.{weight}.weight" for e in range(shape[0]))


def from_hf_config(config_json: Mapping[str, Any]) -> MixtralConfig:
    """Maps a Hugging Face Mixtral ``config.json`` to xlafw's ``MixtralConfig``.

    Raises:
      HfCheckpointError: for a non-Mixtral model, missing sizes, biases, an
        activation other than SiLU, sliding-window attention, router jitter
        noise or an unsupported RoPE type.

    Example:
      >>> from_hf_config(json.load(open("Mixtral-8x7B-v0.1/config.json")))
      MixtralConfig(vocab_size=32000, hidden_size=4096, ..., num_local_experts=8, ...)
    """
    values = {**HF_DEFAULTS, **config_json}
    problems = llama_hf.unsupported(config_json, "mixtral", HF_DEFAULTS)
    if values["sliding_window"] is not None:
        problems.append(
            f"sliding_window is {values['sliding_window']}; xlafw's attention is full causal "
            "(Mixtral's published configs have null)"
        )
    if values["router_jitter_noise"]:
        problems.append(
            f"router_jitter_noise is {values['router_jitter_noise']}; xlafw's router has no noise"
        )
    if problems:
        raise HfCheckpointError(
            "cannot map this config.json to MixtralConfig: " + "; ".join(problems)
        )
    return MixtralConfig(
        **llama_hf.attention_fields(config_json, HF_DEFAULTS),
        num_local_experts=int(values["num_local_experts"]),
        num_experts_per_tok=int(values["num_experts_per_tok"]),
        router_aux_loss_coef=float(values["router_aux_loss_coef"]),
    )


def to_hf_config(config: MixtralConfig, dtype: str = "float32") -> dict[str, Any]:
    """Returns the ``config.json`` of a ``transformers`` ``MixtralForCausalLM``.

    ``capacity_factor`` and ``moe_kernel`` have no counterpart: transformers
    routes dropless.

    Args:
      config: xlafw's config.
      dtype: the stored weights' dtype name (``float32``, ``bfloat16``).

    Raises:
      HfCheckpointError: for a bidirectional model (HF's Mixtral is causal).
    """
    fields = llama_hf.attention_hf_fields(config, dtype)
    fields.pop("attention_bias")  # not a Mixtral setting
    return {
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        **fields,
        "num_local_experts": config.num_local_experts,
        "num_experts_per_tok": config.num_experts_per_tok,
        "router_aux_loss_coef": config.router_aux_loss_coef,
        "output_router_logits": config.router_aux_loss_coef > 0,
        "router_jitter_noise": 0.0,
        "sliding_window": None,
    }
