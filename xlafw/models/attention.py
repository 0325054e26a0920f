"""Attention: one module, implementations chosen by config.

The reference implementation works on every backend. It builds one boolean
mask from causality, key padding and packed-document segment ids and applies it
with ``torch.where`` (never by multiplying ``-inf`` into scores, which turns
fully masked rows into NaN). Grouped KV heads are handled by broadcasting query
groups against each KV head, so K and V are never repeated in memory.
"""

from __future__ import annotations

import dataclasses
import enum

import torch
from torch import nn

from xlafw.models import attention_kernels
from xlafw.models.attention_kernels import KernelBlockSizes
from xlafw.models.rope import RotaryEmbedding, apply_rotary


class AttentionKernel(enum.Enum):
    """Which implementation computes softmax(QK^T)V.

    Attributes:
      REFERENCE: plain tensor ops; works on every backend, supports every mask.
      FLASH: torch_xla's Pallas flash attention (TPU only); causal, padding,
        segment ids and bias; block sizes from ``LlamaConfig.attention_block_sizes``.
      SPLASH: torch_xla's Pallas splash attention (TPU only; block-sparse
        causal/document masks, the fastest on v5p/v6e); no bias.
    """

    REFERENCE = "reference"
    FLASH = "flash_attention"
    SPLASH = "splash_attention"

    @property
    def needs_tpu(self) -> bool:
        return self is not AttentionKernel.REFERENCE


@dataclasses.dataclass(frozen=True)
class AttentionMasks:
    """Everything that decides which key a query may attend to.

    Attributes:
      padding: ``[batch, seq]`` bool, True where the token is real. None means
        no padding.
      segment_ids: ``[batch, seq]`` int, one id per packed document. A query
        attends only to keys of its own segment. None means one document.
      bias: an additive bias broadcastable to ``[batch, heads, seq, seq]``
        (for example ALiBi), added to the scores before the mask.
    """

    padding: torch.Tensor | None = None
    segment_ids: torch.Tensor | None = None
    bias: torch.Tensor | None = None


# A pytree, so a scanned or traced layer can take the masks as one argument.
torch.utils._pytree.register_dataclass(AttentionMasks)


def attention_mask(
    seq_len: int, masks: AttentionMasks, *, is_causal: bool, device: torch.device
) -> torch.Tensor | None:
    """Returns the ``[batch or 1, 1, 1, q, k]`` boolean mask (True = attend), or None."""
    mask = None
    if is_causal:
        idx = torch.arange(seq_len, device=device)
        mask = (idx[:, None] >= idx[None, :])[None]  # [1, q, k]
    if masks.segment_ids is not None:
        seg = masks.segment_ids
        same = seg[:, :, None] == seg[:, None, :]
        mask = same if mask is None else mask & same
    if masks.padding is not None:
        keys = masks.padding[:, None, :].bool()
        mask = keys if mask is None else mask & keys
    if mask is None:
        return None
    return mask[:, None, None]  # broadcast over kv heads and query groups


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    masks: AttentionMasks,
    *,
    is_causal: bool,
) -> torch.Tensor:
    """softmax(QK^T / sqrt(d) + bias) V with grouped KV heads.

    Args:
      q: ``[batch, heads, seq, head_dim]``.
      k: ``[batch, kv_heads, seq, head_dim]``; ``heads % kv_heads == 0``.
      v: like ``k``.
      masks: padding, segment ids and bias.
      is_causal: whether a query may only see keys at or before its position.

    Returns:
      ``[batch, heads, seq, head_dim]``. A query with no visible key (a padding
      query under a padding mask) gets a uniform average, never NaN.
    """
    batch, heads, seq, dim = q.shape
    kv_heads = k.shape[1]
    groups = heads // kv_heads
    qg = q.reshape(batch, kv_heads, groups, seq, dim)
    scores = torch.einsum("bkgqd,bksd->bkgqs", qg, k) * dim**-0.5
    scores = scores.float()
    if masks.bias is not None:
        scores = scores + _group_heads(masks.bias, kv_heads, groups).float()
    mask = attention_mask(seq, masks, is_causal=is_causal, device=q.device)
    if mask is not None:
        scores = torch.where(mask, scores, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    out = torch.einsum("bkgqs,bksd->bkgqd", probs, v)
    return out.reshape(batch, heads, seq, dim)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    masks: AttentionMasks,
    kernel: AttentionKernel,
    *,
    is_causal: bool,
    sizes: KernelBlockSizes = KernelBlockSizes(),
) -> torch.Tensor:
    """Attention with the chosen implementation; shapes as in ``reference_attention``."""
    if kernel is AttentionKernel.FLASH:
        return attention_kernels.flash_attention(q, k, v, masks, is_causal=is_causal, sizes=sizes)
    if kernel is AttentionKernel.SPLASH:
        return attention_kernels.splash_attention(q, k, v, masks, is_causal=is_causal, sizes=sizes)
    return reference_attention(q, k, v, masks, is_causal=is_causal)


def _group_heads(bias: torch.Tensor, kv_heads: int, groups: int) -> torch.Tensor:
    """Views a ``[b, heads or 1, q, k]`` bias as ``[b, kv_heads, groups, q, k]``."""
    if bias.dim() != 4:
        raise ValueError(f"attention bias must be [batch, heads, q, k], got {tuple(bias.shape)}")
    b, h, q, k = bias.shape
    if h == 1:
        return bias[:, :, None]
    return bias.reshape(b, kv_heads, groups, q, k)


class Attention(nn.Module):
    """Multi-head attention with grouped KV heads and rotary positions.

    Args:
      hidden_size: model width.
      num_heads: query heads.
      num_kv_heads: key/value heads; divides ``num_heads``.
      head_dim: width of one head.
      rotary: the rotary embedding shared by all layers.
      kernel: which implementation computes attention.
      is_causal: decoder (True) or bidirectional (False) attention.
      block_sizes: tile sizes of the flash/splash kernels.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        rotary: RotaryEmbedding,
        kernel: AttentionKernel = AttentionKernel.REFERENCE,
        is_causal: bool = True,
        block_sizes: KernelBlockSizes = KernelBlockSizes(),
    ):
        super().__init__()
        self.block_sizes = block_sizes
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.kernel = kernel
        self.is_causal = is_causal
        self.rotary = rotary
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=False)

    def forward(
        self, x: torch.Tensor, position_ids: torch.Tensor, masks: AttentionMasks
    ) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = self.rotary(position_ids, dtype=q.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = attend(q, k, v, masks, self.kernel, is_causal=self.is_causal, sizes=self.block_sizes)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))
