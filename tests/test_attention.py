"""Attention: masking correctness and everything around the flash/splash kernel calls.

The Pallas kernels need a TPU; on CPU the tests cover block sizes, padding to
whole blocks (masked through segment ids, then sliced off), GQA repetition and
partition specs, by running the reference path on exactly the tensors the
kernel would get. The gotcha in torch_xla-cpu.md (an eager backward before XLA
starts breaks later XLA backwards) is avoided by starting XLA first.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import torch_xla
from conftest import ROOT

from xlafw.models.attention import AttentionKernel, AttentionMasks, reference_attention
from xlafw.models.attention_kernels import (
    KernelBlockSizes,
    finish_kernel_output,
    kernel_blocks,
    kernel_partition_specs,
    prepare_kernel_inputs,
)
from xlafw.models.llama import LlamaConfig, LlamaForCausalLM

torch_xla.device()  # start XLA before any eager backward in this process


def _naive(q, k, v, mask):
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, -1) @ v


def _qkv(seq, heads=4, kv_heads=2, dim=8, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, heads, seq, dim, generator=g),
        torch.randn(batch, kv_heads, seq, dim, generator=g),
        torch.randn(batch, kv_heads, seq, dim, generator=g),
    )


# --- masking ---------------------------------------------------------------------------


def test_reference_equals_naive_softmax_under_causal_padding_and_segment_masks():
    q, k, v = _qkv(10)
    segments = torch.tensor([[0] * 4 + [1] * 6, [0] * 10])
    padding = torch.tensor([[1] * 10, [1] * 7 + [0] * 3])
    out = reference_attention(
        q, k, v, AttentionMasks(padding=padding, segment_ids=segments), is_causal=True
    )
    causal = torch.ones(10, 10, dtype=torch.bool).tril()
    mask = causal & (segments[:, :, None] == segments[:, None, :]) & padding[:, None, :].bool()
    real = padding.bool()
    expected = _naive(q, k, v, mask[:, None])
    torch.testing.assert_close(
        out[real[:, None].expand(-1, 4, -1)], expected[real[:, None].expand(-1, 4, -1)]
    )


def test_attention_probabilities_are_exactly_zero_across_documents_and_onto_pads():
    q, k, _ = _qkv(8, heads=2, kv_heads=2, batch=1)
    v = torch.eye(8)[None, None].expand(1, 2, 8, 8)  # output row = the attention weights
    segments = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    padding = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0]])
    weights = reference_attention(
        q, k, v, AttentionMasks(padding=padding, segment_ids=segments), is_causal=True
    )
    assert torch.isfinite(weights).all()  # pad query rows too: no NaN rows
    assert (weights[..., :3, 3:] == 0).all()  # document 0 never sees document 1 or pads
    assert (weights[..., 3:6, :3] == 0).all()  # document 1 never sees document 0
    assert (weights[..., :6, 6:] == 0).all()  # no real query sees a pad


def test_one_documents_loss_has_exactly_zero_gradient_wrt_another_documents_tokens():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config)
    ids = torch.randint(0, 100, (1, 12))
    segments = torch.tensor([[0] * 5 + [1] * 7])
    positions = torch.tensor([list(range(5)) + list(range(7))])
    embeddings = model.model.embed_tokens(ids).detach().requires_grad_()
    model.model.embed_tokens.forward = lambda _: embeddings
    labels = ids.clone()
    # Loss on document 1 only: label 5 would be predicted from document 0's last token.
    labels[:, :6] = -100
    out = model(ids, labels=labels, segment_ids=segments, position_ids=positions)
    out.loss.backward()
    assert (embeddings.grad[0, :5] == 0).all()
    assert (embeddings.grad[0, 5:] != 0).any()


# --- kernel pre/post-processing -------------------------------------------------------


@pytest.mark.parametrize(
    ("seq", "sizes", "expected"),
    [
        (64, KernelBlockSizes(512, 512), (128, 128, 128)),
        (1000, KernelBlockSizes(512, 256), (512, 256, 1024)),
        (8192, KernelBlockSizes(512, 1024), (512, 1024, 8192)),
        (300, KernelBlockSizes(128, 384), (128, 384, 384)),
    ],
)
def test_block_sizes_are_capped_at_the_sequence_and_the_sequence_padded_to_both(
    seq, sizes, expected
):
    blocks = kernel_blocks(seq, sizes)
    assert (blocks.q, blocks.kv, blocks.padded_len) == expected


@pytest.mark.parametrize("causal", [True, False])
def test_padded_to_block_inputs_give_the_unpadded_result_on_real_positions(causal):
    q, k, v = _qkv(50)
    segments = torch.tensor([[0] * 20 + [1] * 30, [3] * 50])
    padding = torch.tensor([[1] * 50, [1] * 45 + [0] * 5])
    masks = AttentionMasks(padding=padding, segment_ids=segments)
    inputs = prepare_kernel_inputs(q, k, v, masks, kernel_blocks(50, KernelBlockSizes(128, 128)))
    assert inputs.q.shape[2] == 128 and inputs.kv_repeats == 2
    assert inputs.k.shape[1] == 4  # K/V repeated to the query heads
    # What a kernel computes from these inputs: causal flag + segment equality.
    padded = reference_attention(
        inputs.q,
        inputs.k,
        inputs.v,
        AttentionMasks(segment_ids=inputs.segment_ids),
        is_causal=causal,
    )
    assert torch.isfinite(padded).all()
    out = finish_kernel_output(padded, inputs)
    expected = reference_attention(q, k, v, masks, is_causal=causal)
    real = padding.bool()[:, None, :, None].expand_as(out)
    torch.testing.assert_close(out[real], expected[real])


def test_segment_ids_mark_pads_and_block_padding_with_zero():
    q, k, v = _qkv(6, batch=1)
    masks = AttentionMasks(
        padding=torch.tensor([[1, 1, 1, 1, 0, 0]]), segment_ids=torch.tensor([[0, 0, 1, 1, 1, 1]])
    )
    inputs = prepare_kernel_inputs(q, k, v, masks, kernel_blocks(6, KernelBlockSizes()))
    assert inputs.segment_ids[0, :8].tolist() == [1, 1, 2, 2, 0, 0, 0, 0]
    assert (inputs.segment_ids[0, 6:] == 0).all()


def test_no_segment_ids_when_nothing_beyond_causality_needs_masking():
    q, k, v = _qkv(128, heads=2, kv_heads=2)
    inputs = prepare_kernel_inputs(
        q, k, v, AttentionMasks(), kernel_blocks(128, KernelBlockSizes())
    )
    assert inputs.segment_ids is None and inputs.kv_repeats == 1 and inputs.q is q


def test_bias_is_padded_with_the_sequence():
    q, k, v = _qkv(10, heads=2, kv_heads=2, batch=1)
    bias = torch.randn(1, 2, 10, 10)
    inputs = prepare_kernel_inputs(
        q, k, v, AttentionMasks(bias=bias), kernel_blocks(10, KernelBlockSizes())
    )
    assert inputs.bias.shape == (1, 2, 128, 128)
    torch.testing.assert_close(inputs.bias[:, :, :10, :10], bias)


@pytest.mark.parametrize(
    ("axes", "heads", "qkv"),
    [
        (
            {"data": 1, "fsdp": 4, "tensor": 2, "context": 1},
            8,
            (("data", "fsdp"), "tensor", None, None),
        ),
        (
            {"data": 1, "fsdp": 4, "tensor": 3, "context": 1},
            8,
            (("data", "fsdp"), None, None, None),
        ),
        ({"data": 2, "fsdp": 4, "tensor": 1}, 8, (("data", "fsdp"), None, None, None)),
    ],
)
def test_partition_specs_split_batch_over_data_fsdp_and_heads_over_tensor(axes, heads, qkv):
    specs = kernel_partition_specs(axes, heads)
    assert specs.qkv == qkv
    assert specs.segment_ids == (("data", "fsdp"), None)


# --- kernels on this CPU machine -----------------------------------------------------


def test_asking_for_flash_attention_on_cpu_exits_2_naming_the_backend_limit(xlafw_cli):
    proc = xlafw_cli("--fdl_config=llama_tiny", "--fdl.model.config.attention_kernel=FLASH")
    assert proc.returncode == 2
    assert (
        "flash_attention needs a TPU: Pallas kernels only run in interpret mode on XLA's CPU"
        in (proc.stderr + proc.stdout)
    )


FLASH_PROBE = textwrap.dedent(
    """
    import torch, torch_xla
    from xlafw.models.attention import AttentionKernel, AttentionMasks, attend
    dev = torch_xla.device()
    q = torch.randn(2, 4, 50, 8, device=dev)
    k, v = torch.randn(2, 2, 50, 8, device=dev), torch.randn(2, 2, 50, 8, device=dev)
    masks = AttentionMasks(segment_ids=torch.zeros(2, 50, dtype=torch.long, device=dev))
    try:
        attend(q, k, v, masks, AttentionKernel.FLASH, is_causal=True)
    except Exception as e:
        print("ERROR", type(e).__name__, e)
    """
)


def test_flash_path_reaches_the_pallas_kernel_which_refuses_xlas_cpu_backend():
    proc = subprocess.run(
        [sys.executable, "-c", FLASH_PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert "Only interpret mode is supported on CPU backend" in proc.stdout, proc.stderr[-2000:]


def test_kernel_enum_names_what_needs_a_tpu():
    assert not AttentionKernel.REFERENCE.needs_tpu
    assert AttentionKernel.FLASH.needs_tpu and AttentionKernel.SPLASH.needs_tpu
