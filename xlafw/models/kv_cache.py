"""Inference with a static key/value cache, reusing a built ``LlamaForCausalLM``'s modules.

Training never runs this code: ``LlamaForCausalLM.forward`` (and the graph the
trainer compiles) is untouched. ``forward_cached`` walks the same modules
(embedding, norms, projections, rotary table, MLPs, LM head) and differs only
in attention, which reads every key of a fixed-length cache under a mask
instead of the chunk's own keys.

Every shape is static, so on XLA one graph serves every decode step and one
graph serves every prompt of one padded length:

- the cache holds ``max_len`` positions from the start, zero-filled (a masked
  key must hold a finite value: 0 x NaN would still poison the output);
- where a chunk's tokens go (``start``) and which logits are wanted (``last``)
  are 1-element tensors, inputs of the graph rather than constants in it;
- a key is visible to a query when its position is at or before the query's,
  so entries a padded prompt wrote past its end are hidden until the decode
  step that reaches their position overwrites them.

Example:
  >>> cache = KVCache.empty(model.config, batch=1, max_len=256, dtype=torch.float32)
  >>> zero = torch.zeros(1, dtype=torch.long)
  >>> logits = forward_cached(model, ids, start=zero, last=torch.tensor([4]), cache=cache)
"""

from __future__ import annotations

import dataclasses

import torch

from xlafw.models.attention import Attention
from xlafw.models.llama import LlamaConfig, LlamaForCausalLM
from xlafw.models.rope import apply_rotary


@dataclasses.dataclass
class KVCache:
    """Keys and values of every layer, ``[batch, kv_heads, max_len, head_dim]`` each.

    Attributes:
      keys: one tensor per decoder layer, rotated as attention uses them.
      values: one tensor per decoder layer.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @classmethod
    def empty(
        cls,
        config: LlamaConfig,
        batch: int,
        max_len: int,
        dtype: torch.dtype,
        device: torch.device | str | None = None,
    ) -> KVCache:
        """A zero-filled cache of ``max_len`` positions for ``config``'s model."""
        shape = (batch, config.num_key_value_heads, max_len, config.resolved_head_dim)
        layers = range(config.num_hidden_layers)
        return cls(
            keys=[torch.zeros(shape, dtype=dtype, device=device) for _ in layers],
            values=[torch.zeros(shape, dtype=dtype, device=device) for _ in layers],
        )

    @property
    def max_len(self) -> int:
        return self.keys[0].shape[2]


def _cached_attention(
    attn: Attention,
    x: torch.Tensor,
    positions: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    visible: torch.Tensor,
) -> torch.Tensor:
    """``attn`` over the cache after writing this chunk's keys and values into it.

    Args:
      attn: a decoder layer's attention (its weights and rotary table are used).
      x: ``[batch, seq, hidden]`` normed hidden states of the new tokens.
      positions: ``[seq]`` their positions, also their slots in the cache.
      keys: this layer's key cache, updated in place.
      values: this layer's value cache, updated in place.
      visible: ``[seq, max_len]`` bool, True where a query may read a key.
    """
    batch, seq, _ = x.shape
    heads, kv_heads, dim = attn.num_heads, attn.num_kv_heads, attn.head_dim
    q = attn.q_proj(x).view(batch, seq, heads, dim).transpose(1, 2)
    k = attn.k_proj(x).view(batch, seq, kv_heads, dim).transpose(1, 2)
    v = attn.v_proj(x).view(batch, seq, kv_heads, dim).transpose(1, 2)
    cos, sin = attn.rotary(positions[None], dtype=q.dtype)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    keys.index_copy_(2, positions, k.to(keys.dtype))
    values.index_copy_(2, positions, v.to(values.dtype))
    # Query groups broadcast against each KV head, as in reference_attention.
    qg = q.reshape(batch, kv_heads, heads // kv_heads, seq, dim)
    scores = torch.einsum("bkgqd,bksd->bkgqs", qg, keys).float() * dim**-0.5
    scores = torch.where(visible, scores, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1).to(values.dtype)
    out = torch.einsum("bkgqs,bksd->bkgqd", probs, values).reshape(batch, heads, seq, dim)
    return attn.o_proj(out.transpose(1, 2).reshape(batch, seq, heads * dim))


def forward_cached(
    model: LlamaForCausalLM,
    input_ids: torch.Tensor,
    start: torch.Tensor,
    last: torch.Tensor,
    cache: KVCache,
) -> torch.Tensor:
    """Runs new tokens through the model, extending ``cache``; returns one position's logits.

    Args:
      model: a causal ``LlamaForCausalLM`` (any dtype, CPU or XLA device).
      input_ids: ``[batch, seq]`` tokens at positions ``start .. start + seq - 1``;
        a padded prompt may run past its end (see the module docstring).
      start: ``[1]`` long tensor, the position of ``input_ids[:, 0]``.
      last: ``[1]`` long tensor, the index in ``input_ids`` whose logits are returned.
      cache: the cache, updated in place; ``start + seq <= cache.max_len``.

    Returns:
      ``[batch, vocab]`` float32 logits predicting the token after ``input_ids[:, last]``.

    Raises:
      ValueError: for a bidirectional model or a cache of another depth.
    """
    config = model.config
    if not config.is_causal:
        raise ValueError("a bidirectional model (is_causal=False) cannot generate text")
    if len(cache.keys) != config.num_hidden_layers:
        raise ValueError(
            f"the cache has {len(cache.keys)} layers, the model {config.num_hidden_layers}"
        )
    seq, device = input_ids.shape[1], input_ids.device
    positions = start + torch.arange(seq, device=device)
    slots = torch.arange(cache.max_len, device=device)
    visible = slots[None, :] <= positions[:, None]
    h = model.model.embed_tokens(input_ids)
    for layer, keys, values in zip(model.model.layers, cache.keys, cache.values, strict=True):
        x = layer.input_layernorm(h)
        h = h + _cached_attention(layer.self_attn, x, positions, keys, values, visible)
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    h = model.model.norm(h.index_select(1, last))  # the norm is per position: norm one
    return model.lm_head(h[:, 0]).float()
