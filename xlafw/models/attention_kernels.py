"""Flash and splash attention (torch_xla's Pallas kernels) and the work around them.

In training the kernels run only on TPU (on XLA's CPU backend Pallas kernels
run only in interpret mode, which torch_xla's wrappers have no option for;
validation refuses them there). Everything around the call is plain tensor code and is tested on
CPU: block sizes (``kernel_blocks``), padding to whole blocks with the padding
masked by segment ids (``prepare_kernel_inputs``), grouped KV heads, the
partition specs taken from the global mesh (``kernel_partition_specs``) and
slicing the padding off (``finish_kernel_output``). The kernel bodies are
checked on CPU too, in JAX's Pallas interpret mode through torch_xla's JAX
bridge (tests/test_attention_interpret.py): ``splash_attention`` below runs end
to end under ``jax.experimental.pallas.tpu.force_tpu_interpret_mode(True)``;
torch_xla's flash wrapper always builds a Mosaic call, so there JAX's flash
kernel runs through ``call_jax`` on what ``prepare_kernel_inputs`` produces.

Masking: causality is the kernel's ``causal`` flag; padding and packed
documents become segment ids, which the kernels compare for equality. Real
tokens get ``segment_id + 1``, pad tokens (the batch's own padding and the
block padding) get 0, so no real query ever sees a pad key, and a pad query
always sees at least itself (no empty softmax row, no NaN). Outputs at pad
positions are finite but unspecified; the loss ignores them.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from xlafw.arguments import InvalidArgument, is_int, raise_invalid
from xlafw.parallel.mesh import AXIS_NAMES, BATCH_AXES

LANE = 128  # TPU vector lanes: kernel blocks are multiples of this.
HEAD_AXIS = "tensor"


@dataclasses.dataclass(frozen=True)
class KernelBlockSizes:
    """Block sizes of the flash/splash kernels (query and key/value tiles).

    Attributes:
      q: query rows per block (forward and backward).
      kv: key/value rows per block (forward and backward).
    Both are capped at the sequence length rounded up to 128; the sequence is
    padded up to a multiple of both. 512 is torch_xla's flash default; splash
    is often fastest at 1024-2048 on v5p/v6e for long sequences.
    """

    q: int = 512
    kv: int = 512

    def __post_init__(self):
        raise_invalid(*(_block_problem(name, getattr(self, name)) for name in ("q", "kv")))


def _block_problem(name: str, size: object) -> InvalidArgument | None:
    if is_int(size) and size >= LANE and size % LANE == 0:
        return None
    return InvalidArgument(
        name, size, f"must be a positive multiple of {LANE} (TPU vector lanes). Fix: e.g. 512."
    )


@dataclasses.dataclass(frozen=True)
class Blocks:
    """Block sizes resolved for one sequence length.

    Attributes:
      q: query block.
      kv: key/value block.
      padded_len: the sequence length rounded up to a multiple of both.
    """

    q: int
    kv: int
    padded_len: int


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def kernel_blocks(seq_len: int, sizes: KernelBlockSizes) -> Blocks:
    """Resolves the configured block sizes for ``seq_len``.

    Examples: seq 64, blocks 512 -> blocks 128, padded 128; seq 1000,
    blocks (512, 256) -> padded 1024; seq 8192 -> no padding.
    """
    cap = _round_up(seq_len, LANE)
    q, kv = min(sizes.q, cap), min(sizes.kv, cap)
    return Blocks(q, kv, _round_up(seq_len, math.lcm(q, kv)))


@dataclasses.dataclass
class KernelInputs:
    """What the kernel is called with.

    Attributes:
      q, k, v: ``[batch, heads, padded_len, head_dim]``; K and V repeated to
        the query head count when ``kv_repeats > 1``.
      segment_ids: ``[batch, padded_len]`` int32 (0 = pad), or None when no
        mask beyond causality is needed.
      bias: ``[batch, heads, padded_len, padded_len]`` or None.
      seq_len: the unpadded length, to slice the output back to.
      kv_repeats: how many times each KV head was repeated.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    segment_ids: torch.Tensor | None
    bias: torch.Tensor | None
    seq_len: int
    kv_repeats: int


def _pad_seq(x: torch.Tensor, dim: int, pad: int, value: float = 0.0) -> torch.Tensor:
    if pad == 0:
        return x
    shape = list(x.shape)
    shape[dim] = pad
    return torch.cat([x, x.new_full(shape, value)], dim=dim)


def prepare_kernel_inputs(q, k, v, masks, blocks: Blocks) -> KernelInputs:
    """Pads to whole blocks, turns padding/documents into segment ids, repeats KV heads.

    torch_xla's flash and splash wrappers take as many K/V heads as query heads
    (the JAX splash kernel has an MQA form, but torch_xla exposes only the MHA
    one), so grouped K/V are repeated here: ``heads / kv_heads`` x the K/V
    memory inside attention, not the reference path's zero-copy broadcast.
    """
    batch, heads, seq, _ = q.shape
    repeats = heads // k.shape[1]
    if repeats > 1:
        k = k.repeat_interleave(repeats, dim=1)
        v = v.repeat_interleave(repeats, dim=1)
    pad = blocks.padded_len - seq
    segment_ids = None
    if pad or masks.segment_ids is not None or masks.padding is not None:
        real = torch.ones(batch, seq, dtype=torch.bool, device=q.device)
        if masks.padding is not None:
            real = masks.padding.bool()
        ids = (
            masks.segment_ids
            if masks.segment_ids is not None
            else torch.zeros_like(real, dtype=torch.int32)
        )
        segment_ids = _pad_seq(torch.where(real, ids.to(torch.int32) + 1, 0), 1, pad)
    bias = masks.bias
    if bias is not None:
        bias = _pad_seq(_pad_seq(bias.expand(batch, heads, seq, seq), 2, pad), 3, pad)
    return KernelInputs(
        q=_pad_seq(q, 2, pad),
        k=_pad_seq(k, 2, pad),
        v=_pad_seq(v, 2, pad),
        segment_ids=segment_ids,
        bias=bias,
        seq_len=seq,
        kv_repeats=repeats,
    )


def finish_kernel_output(out: torch.Tensor, inputs: KernelInputs) -> torch.Tensor:
    """Slices the block padding off ``[batch, heads, padded_len, dim]``."""
    return out[:, :, : inputs.seq_len]


@dataclasses.dataclass(frozen=True)
class PartitionSpecs:
    """How the kernel's inputs are laid out on the mesh (for shard_map).

    Attributes:
      qkv: spec of ``[batch, heads, seq, head_dim]``.
      segment_ids: spec of ``[batch, seq]``.
    """

    qkv: tuple
    segment_ids: tuple


def kernel_partition_specs(axis_sizes: dict[str, int], heads: int) -> PartitionSpecs:
    """Batch over ``BATCH_AXES``, heads over ``tensor``, as the rules shard activations.

    Axes missing from the mesh are left out; heads stay whole when ``tensor``
    does not divide them. The sequence is never split: neither kernel accepts
    a sharded sequence (context parallelism needs ring attention).
    """
    batch = tuple(a for a in BATCH_AXES if a in axis_sizes) or None
    head = (
        HEAD_AXIS
        if axis_sizes.get(HEAD_AXIS, 1) > 1 and heads % axis_sizes[HEAD_AXIS] == 0
        else None
    )
    return PartitionSpecs(qkv=(batch, head, None, None), segment_ids=(batch, None))


def _global_mesh():
    import torch_xla.runtime as xr

    if not xr.is_spmd():
        return None
    import torch_xla.distributed.spmd as xs

    return xs.get_global_mesh()


def flash_attention(q, k, v, masks, *, is_causal: bool, sizes: KernelBlockSizes) -> torch.Tensor:
    """torch_xla's Pallas flash attention (TPU), with padding, masks and GQA handled here."""
    from torch_xla.experimental.custom_kernel import FlashAttention
    from torch_xla.experimental.custom_kernel import flash_attention as kernel

    blocks = kernel_blocks(q.shape[2], sizes)
    inputs = prepare_kernel_inputs(q, k, v, masks, blocks)
    # torch_xla reads flash block sizes from this class attribute when it traces
    # the forward and, later, the backward; every layer writes the same values,
    # so both passes agree.
    FlashAttention.DEFAULT_BLOCK_SIZES.update(
        {name: blocks.q for name in ("block_q", "block_q_major_dkv", "block_q_dkv", "block_q_dq")}
        | {
            name: blocks.kv
            for name in (
                "block_k_major",
                "block_k",
                "block_k_major_dkv",
                "block_k_dkv",
                "block_k_dq",
                "block_k_major_dq",
            )
        }
    )
    mesh = _global_mesh()
    spec = None
    if mesh is not None:
        spec = kernel_partition_specs(dict(mesh.shape()), q.shape[1]).qkv
    seg = inputs.segment_ids
    out = kernel(
        inputs.q,
        inputs.k,
        inputs.v,
        is_causal,
        seg,
        seg,
        q.shape[-1] ** -0.5,
        ab=inputs.bias,
        partition_spec=spec,
        mesh=mesh,
    )
    return finish_kernel_output(out, inputs)


def splash_attention(q, k, v, masks, *, is_causal: bool, sizes: KernelBlockSizes) -> torch.Tensor:
    """torch_xla's Pallas splash attention (TPU); no elementwise bias."""
    import numpy as np
    import torch_xla.distributed.spmd as xs
    from torch_xla.experimental.splash_attention import SplashAttentionConfig
    from torch_xla.experimental.splash_attention import splash_attention as kernel

    if masks.bias is not None:
        raise ValueError("splash_attention takes no attention bias; use flash_attention.")
    blocks = kernel_blocks(q.shape[2], sizes)
    # Splash does not scale the scores; scale the queries (as MaxText does).
    inputs = prepare_kernel_inputs(q * q.shape[-1] ** -0.5, k, v, masks, blocks)
    mesh = _global_mesh()
    if mesh is None:  # torch_xla's splash always goes through shard_map
        mesh = xs.Mesh(np.arange(1), (1,) * len(AXIS_NAMES), AXIS_NAMES)
    specs = kernel_partition_specs(dict(mesh.shape()), q.shape[1])
    block_fields = {f"sa_block_{n}": blocks.q for n in ("q", "q_dkv", "q_dq")}
    block_fields |= {f"sa_block_{n}": blocks.kv for n in ("kv", "kv_compute", "kv_dkv")}
    block_fields |= {f"sa_block_{n}": blocks.kv for n in ("kv_dkv_compute", "kv_dq")}
    config = SplashAttentionConfig(
        mesh=str(mesh),
        qkv_partition_spec=specs.qkv,
        segment_ids_partition_spec=specs.segment_ids,
        **block_fields,
    )
    out = kernel(
        inputs.q, inputs.k, inputs.v, config.to_json(), inputs.segment_ids, causal=is_causal
    )
    return finish_kernel_output(out, inputs)
