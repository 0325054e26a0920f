"""Llama 3 style decoder-only transformer, a plain ``nn.Module``.

Parameter names match Hugging Face's ``LlamaForCausalLM`` (``model.layers.N.
self_attn.q_proj.weight`` ...), so sharding rules read like torchprime's and HF
weights load without renaming.

Weight init: every linear and embedding weight ~ N(0, ``initializer_range``),
RMSNorm gains = 1, as in Hugging Face's Llama. There are no biases.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from xlafw.arguments import InvalidArgument, instance, integer, is_int, number, raise_invalid
from xlafw.models.attention import Attention, AttentionKernel, AttentionMasks
from xlafw.models.attention_kernels import KernelBlockSizes
from xlafw.models.layers import (
    IGNORE_INDEX,
    CausalLMOutput,
    DecoderLayers,
    RMSNorm,
    causal_lm_output,
    count_targets,
    init_normal,
)
from xlafw.models.rope import Llama3RopeScaling, RotaryEmbedding

__all__ = [
    "IGNORE_INDEX",
    "CausalLMOutput",
    "LlamaConfig",
    "LlamaDecoderLayer",
    "LlamaForCausalLM",
    "LlamaMLP",
    "LlamaModel",
    "RMSNorm",
]


# Upper bounds of LlamaConfig's sizes, far above any published model (Llama 3.1
# 405B: width 16384, MLP 53248, 126 layers, 128 heads, vocabulary 128256). They
# keep a slip such as extra digits from reaching validation's meta-device build,
# which builds every layer, and the rotary table it computes on the host.
SIZE_LIMITS = {
    "vocab_size": 2**24,
    "hidden_size": 2**20,
    "intermediate_size": 2**22,
    "num_hidden_layers": 2**12,
    "num_attention_heads": 2**12,
    "num_key_value_heads": 2**12,
    "max_position_embeddings": 2**40,
}
HEAD_DIM_LIMIT = 2**16
_SIZE_FIX = (
    "sizes are checked against generous limits (SIZE_LIMITS in xlafw/models/llama/model.py)."
)


def _head_dim_problem(head_dim: object) -> InvalidArgument | None:
    if head_dim is None or (
        is_int(head_dim) and 2 <= head_dim <= HEAD_DIM_LIMIT and head_dim % 2 == 0
    ):
        return None
    return InvalidArgument(
        "head_dim",
        head_dim,
        f"must be an even integer from 2 to {HEAD_DIM_LIMIT} (RoPE rotates pairs of "
        f"dimensions), or None for hidden_size // num_attention_heads.",
    )


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Hyper-parameters of a Llama model.

    Attributes:
      vocab_size: rows of the embedding and the LM head; must be at least the
        tokenizer's vocabulary.
      hidden_size: model width.
      intermediate_size: SwiGLU MLP width.
      num_hidden_layers: decoder layers.
      num_attention_heads: query heads.
      num_key_value_heads: KV heads (grouped-query attention); divides
        ``num_attention_heads``.
      head_dim: width of one head; None means ``hidden_size // num_attention_heads``.
      max_position_embeddings: the longest sequence the model is meant for.
      rope_theta: RoPE base.
      rope_scaling: Llama 3.1 frequency scaling, or None for plain RoPE.
      rms_norm_eps: epsilon of every RMSNorm.
      initializer_range: std of the normal init of every weight matrix.
      attention_kernel: which attention implementation runs.
      attention_block_sizes: query/key tile sizes of the flash and splash
        kernels (ignored by the reference kernel).
      is_causal: decoder (True) or bidirectional (False) attention.

    Each field's own range is checked when the config is made (``__post_init__``;
    a subclass's ``__post_init__`` calls ``super().__post_init__()`` first);
    checks across fields and against the data are the family's
    (``LlamaFamily.problems``).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int | None = None
    max_position_embeddings: int = 8192
    rope_theta: float = 500000.0
    rope_scaling: Llama3RopeScaling | None = None
    rms_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    attention_kernel: AttentionKernel = AttentionKernel.REFERENCE
    attention_block_sizes: KernelBlockSizes = KernelBlockSizes()
    is_causal: bool = True

    def __post_init__(self):
        raise_invalid(
            *(
                integer(name, getattr(self, name), at_least=1, at_most=limit, fix=_SIZE_FIX)
                for name, limit in SIZE_LIMITS.items()
            ),
            _head_dim_problem(self.head_dim),
            number("rope_theta", self.rope_theta, above=0, fix="Llama 3 uses 500000.0."),
            instance(
                "rope_scaling",
                self.rope_scaling,
                Llama3RopeScaling,
                allow_none=True,
                fix="a Llama3RopeScaling, or None for plain RoPE.",
            ),
            number("rms_norm_eps", self.rms_norm_eps, above=0, fix="Llama uses 1e-5."),
            number(
                "initializer_range",
                self.initializer_range,
                above=0,
                fix="the std of the normal init, e.g. 0.02 (0 would make every weight 0).",
            ),
            instance("attention_kernel", self.attention_kernel, AttentionKernel),
            instance("attention_block_sizes", self.attention_block_sizes, KernelBlockSizes),
            instance("is_causal", self.is_causal, bool),
        )

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def q_width(self) -> int:
        """Query (and attention output) width: heads x head_dim."""
        return self.num_attention_heads * self.resolved_head_dim

    @property
    def kv_width(self) -> int:
        """Key (and value) width: KV heads x head_dim."""
        return self.num_key_value_heads * self.resolved_head_dim


class LlamaMLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def llama_attention(config: LlamaConfig, rotary: RotaryEmbedding) -> Attention:
    """The attention block of a Llama layer (Mixtral's layers use the same)."""
    return Attention(
        config.hidden_size,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.resolved_head_dim,
        rotary,
        kernel=config.attention_kernel,
        is_causal=config.is_causal,
        block_sizes=config.attention_block_sizes,
    )


class LlamaDecoderLayer(nn.Module):
    """Pre-norm attention block followed by a pre-norm MLP block."""

    def __init__(self, config: LlamaConfig, rotary: RotaryEmbedding):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = llama_attention(config, rotary)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config.hidden_size, config.intermediate_size)

    def forward(
        self, x: torch.Tensor, position_ids: torch.Tensor, masks: AttentionMasks
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), position_ids, masks)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    """Embedding, decoder stack and final norm (no LM head).

    Args:
      config: the model's hyper-parameters.
      layer: builds one decoder layer from the config and the shared rotary
        table (Mixtral passes its MoE layer).
    """

    def __init__(
        self,
        config: LlamaConfig,
        layer: Callable[[LlamaConfig, RotaryEmbedding], nn.Module] = LlamaDecoderLayer,
    ):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        # One rotary table shared by every layer; it holds no parameters.
        rotary = RotaryEmbedding(config.resolved_head_dim, config.rope_theta, config.rope_scaling)
        self.layers = DecoderLayers(layer(config, rotary) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        masks: AttentionMasks = AttentionMasks(),
    ) -> torch.Tensor:
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        h = self.embed_tokens(input_ids)
        h = self.layers(h, position_ids, masks)
        return self.norm(h)


class LlamaForCausalLM(nn.Module):
    """Llama with an untied LM head and a causal-LM loss.

    Args:
      config: the model's hyper-parameters.
    """

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.apply(functools.partial(init_normal, std=config.initializer_range))

    count_targets = staticmethod(count_targets)

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
    ) -> CausalLMOutput:
        """Runs the model.

        Args:
          input_ids: ``[batch, seq]`` token ids.
          labels: ``[batch, seq]`` aligned with ``input_ids`` (position i holds
            token i; -100 where no loss is wanted). The model shifts them: the
            hidden state at i predicts label i+1. Hidden states are sliced
            before the LM head, so the last position's logits are never computed.
          position_ids: ``[batch, seq]``; defaults to 0..seq-1.
          attention_mask: ``[batch, seq]``, 1 for real tokens, 0 for padding.
          segment_ids: ``[batch, seq]`` packed-document ids; attention stays
            inside a document.

        Returns:
          The loss (with labels) or the logits (without).
        """
        masks = AttentionMasks(padding=attention_mask, segment_ids=segment_ids)
        h = self.model(input_ids, position_ids, masks)
        return causal_lm_output(self.lm_head, h, labels)
