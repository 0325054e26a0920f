"""The Llama family: ``LlamaForCausalLM`` and what xlafw knows about it (``FAMILY``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from xlafw.models.family import ActivationDtypes, ModelFamily
from xlafw.models.llama import hf
from xlafw.models.llama.model import (
    IGNORE_INDEX,
    CausalLMOutput,
    LlamaConfig,
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaMLP,
    LlamaModel,
)
from xlafw.models.llama.sharding import LLAMA_FSDP, LLAMA_FSDP_TP, RULE_SETS
from xlafw.parallel.sharding import ShardingRules

__all__ = [
    "FAMILY",
    "IGNORE_INDEX",
    "LLAMA_FSDP",
    "LLAMA_FSDP_TP",
    "CausalLMOutput",
    "LlamaConfig",
    "LlamaDecoderLayer",
    "LlamaFamily",
    "LlamaForCausalLM",
    "LlamaMLP",
    "LlamaModel",
]


class LlamaFamily(ModelFamily):
    """Dense decoder: GQA attention with RoPE and a SwiGLU MLP per layer.

    Activation memory per token and layer, kept for the backward (divided by
    ``tensor``, whose rules split the hidden dimension): ``4h`` of residual
    stream (layer input, both norm outputs, the residual after attention), and
    ``2q + 2kv`` of attention matmul outputs (query and attention output, key
    and value) plus the MLP's (``mlp_activation_elements``: gate, up,
    silu(gate) and their product, ``4i``). The reference attention kernel also
    keeps ``heads * seq_len`` scores (float32) and probabilities (compute
    dtype). The head keeps the final norm's input and output (``2h``,
    residual) and the logits in the compute dtype and their float32 copy
    (``vocab`` each). This ignores XLA's temporaries and fusion: a floor with
    roughly 10-20% to spare, not a promise.
    """

    name = "llama"
    config_class = LlamaConfig
    model_class = LlamaForCausalLM
    layer_class = LlamaDecoderLayer
    hf_model_type = "llama"
    hf_architecture = "LlamaForCausalLM"
    architecture_fields = hf.ARCHITECTURE_FIELDS

    @property
    def sharding_rules(self) -> Mapping[str, ShardingRules]:
        return RULE_SETS

    def problems(self, config: LlamaConfig, seq_len: int) -> Iterator[str]:
        heads, kv = config.num_attention_heads, config.num_key_value_heads
        if heads % kv:
            yield (
                f"model.config.num_attention_heads={heads} is not divisible by "
                f"model.config.num_key_value_heads={kv}. Fix: choose kv heads that divide the "
                f"heads."
            )
        if config.head_dim is None and config.hidden_size % heads:
            yield (
                f"model.config.hidden_size={config.hidden_size} is not divisible by "
                f"model.config.num_attention_heads={heads}. Fix: change one, or set "
                f"model.config.head_dim."
            )
        elif config.head_dim is None and (config.hidden_size // heads) % 2:
            yield (
                f"model.config.hidden_size={config.hidden_size} / "
                f"model.config.num_attention_heads={heads} gives an odd head width "
                f"({config.hidden_size // heads}); RoPE rotates pairs of dimensions. Fix: "
                f"change one, or set an even model.config.head_dim."
            )
        if seq_len > config.max_position_embeddings:
            yield (
                f"data.seq_len={seq_len} exceeds model.config.max_position_embeddings="
                f"{config.max_position_embeddings}. Fix: shorten the sequence or raise the limit."
            )

    def attention_width(self, config: LlamaConfig) -> int:
        return config.q_width

    def attention_parameters(self, config: LlamaConfig) -> int:
        """q, k, v and o projections of one layer."""
        return 2 * config.hidden_size * (config.q_width + config.kv_width)

    def mlp_matmul_parameters(self, config: LlamaConfig) -> int:
        """The MLP weights one token goes through in one layer (gate, up, down)."""
        return 3 * config.hidden_size * config.intermediate_size

    def matmul_parameters(self, config: LlamaConfig) -> int:
        per_layer = self.attention_parameters(config) + self.mlp_matmul_parameters(config)
        return config.num_hidden_layers * per_layer + config.hidden_size * config.vocab_size

    def mlp_activation_elements(self, config: LlamaConfig) -> float:
        """Matmul outputs one token's MLP keeps for the backward (compute dtype)."""
        return 4 * config.intermediate_size

    def activation_bytes_per_token(
        self,
        config: LlamaConfig,
        seq_len: int,
        dtypes: ActivationDtypes,
        tensor_ways: int,
        remat_layers: bool,
    ) -> float:
        h, vocab = config.hidden_size, config.vocab_size
        matmul = 2 * config.q_width + 2 * config.kv_width + self.mlp_activation_elements(config)
        scores = config.num_attention_heads * seq_len * (4 + dtypes.compute)
        per_layer = (4 * h * dtypes.residual + matmul * dtypes.compute + scores) / tensor_ways
        layers = config.num_hidden_layers
        if remat_layers:
            kept = layers * h * dtypes.residual / tensor_ways + per_layer
        else:
            kept = layers * per_layer
        head = 2 * h * dtypes.residual + vocab * (dtypes.compute + 4)
        return kept + head

    def from_hf_config(self, config_json: Mapping[str, Any]) -> LlamaConfig:
        return hf.from_hf_config(config_json)

    def to_hf_config(self, config: LlamaConfig, dtype: str = "float32") -> dict[str, Any]:
        return hf.to_hf_config(config, dtype)


FAMILY = LlamaFamily()
