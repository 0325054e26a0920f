"""The Pallas attention kernels, run in interpret mode on XLA's CPU, against the reference path.

On XLA's CPU backend Pallas kernels run only in interpret mode. In that mode a
``pallas_call`` lowers to plain HLO (its grid becomes a loop of dynamic slices
over the blocks), and ``torch_xla.core.xla_builder.call_jax`` can embed that
HLO in the lazy graph. The kernel bodies then run on this machine:

* Splash: our production ``attention_kernels.splash_attention`` runs end to
  end. torch_xla's splash wrapper is itself a JAX function behind ``call_jax``
  (forward, and ``jax.vjp`` for the backward), so tracing it under
  ``pltpu.force_tpu_interpret_mode(True)`` runs the real splash kernels (forward,
  dq, dkv, block-sparse causal mask) in interpret mode.
* Flash: torch_xla's wrapper cannot run this way (it extracts a Mosaic kernel
  and calls ``_xla_tpu_custom_call``; see the last test), so JAX's
  ``flash_attention`` (whose forward, dq and dkv kernels torch_xla's wrapper
  calls) runs through ``call_jax`` on what ``prepare_kernel_inputs`` produces,
  with the block sizes, scale and segment ids the production wrapper passes.
  ``call_jax`` has no autograd, so a ``torch.autograd.Function`` calls
  ``call_jax`` on ``jax.vjp`` of the same function in its backward, which runs
  the kernel's own Pallas backward.

Interpret mode: ``force_tpu_interpret_mode`` makes every ``pallas_call``
traced under it use its argument as ``interpret=``. ``True`` selects the HLO
interpreter. Its documented argument, ``InterpretParams()``, selects the Mosaic
TPU interpreter, which simulates TPU memory with host callbacks whose
token-typed HLO torch_xla refuses (``XLA type not supported: 17``). The setting
is thread-local and read while tracing, and torch_xla traces splash's backward
in the autograd engine's thread, so those backwards run with
``torch.autograd.set_multithreading_enabled(False)``. ``call_jax`` keys its cache
on JAX's trace context, which includes this setting, so interpreted and Mosaic
traces of one function never mix.

The case: 4 query heads over 2 KV heads, sequence 200 padded to 256 (a 2 x 2
grid of 128-blocks, so causal block skipping and block padding both occur),
packed documents that cross the block boundary, left and right padding, causal
and bidirectional. Outputs are compared on real positions and the gradients of
a loss over real positions are compared everywhere, in fp32 at 1e-5.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable

import jax
import pytest
import torch
import torch_xla
import torch_xla.core.xla_builder as xb
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas.ops.tpu import flash_attention as jax_flash

from xlafw.models import attention_kernels
from xlafw.models.attention import AttentionMasks, reference_attention
from xlafw.models.attention_kernels import (
    Blocks,
    KernelBlockSizes,
    finish_kernel_output,
    kernel_blocks,
    prepare_kernel_inputs,
)

torch_xla.device()  # start XLA before any eager backward in this process

BATCH, HEADS, KV_HEADS, SEQ, DIM = 2, 4, 2, 200, 8
SIZES = KernelBlockSizes(128, 128)
TOL = {"atol": 1e-5, "rtol": 1e-5}


@contextlib.contextmanager
def interpreted():
    """Pallas kernels traced inside run in JAX's HLO interpreter, backward included."""
    with pltpu.force_tpu_interpret_mode(True), torch.autograd.set_multithreading_enabled(False):
        yield


# --- JAX's flash kernel through call_jax ------------------------------------------------


@dataclasses.dataclass(frozen=True)
class JaxAttention:
    """A JAX attention function ``(q, k, v, segment_ids) -> out`` and its VJP."""

    forward: Callable
    backward: Callable  # (q, k, v, segment_ids, d_out) -> (dq, dk, dv)


def _with_vjp(forward: Callable) -> JaxAttention:
    def backward(q, k, v, segment_ids, d_out):
        _, pull = jax.vjp(lambda q, k, v: forward(q, k, v, segment_ids), q, k, v)
        return pull(d_out)

    return JaxAttention(forward, backward)


@functools.cache  # one function object per shape: call_jax caches traces by id()
def jax_flash_attention(blocks: Blocks, causal: bool) -> JaxAttention:
    """JAX's flash kernel with what ``attention_kernels.flash_attention`` passes torch_xla's."""
    q_block, kv_block = blocks.q, blocks.kv
    sizes = jax_flash.BlockSizes(
        block_q=q_block,
        block_k_major=kv_block,
        block_k=kv_block,
        block_b=1,
        block_q_major_dkv=q_block,
        block_k_major_dkv=kv_block,
        block_k_dkv=kv_block,
        block_q_dkv=q_block,
        block_k_major_dq=kv_block,
        block_k_dq=kv_block,
        block_q_dq=q_block,
    )

    def forward(q, k, v, segment_ids):
        return jax_flash.flash_attention(
            q,
            k,
            v,
            segment_ids=jax_flash.SegmentIds(q=segment_ids, kv=segment_ids),
            causal=causal,
            sm_scale=q.shape[-1] ** -0.5,
            block_sizes=sizes,
        )

    return _with_vjp(forward)


class CallJax(torch.autograd.Function):
    """``call_jax`` with a backward: the function's ``jax.vjp``, also through ``call_jax``."""

    @staticmethod
    def forward(ctx, fn: JaxAttention, q, k, v, segment_ids):
        ctx.fn = fn
        ctx.save_for_backward(q, k, v, segment_ids)
        with pltpu.force_tpu_interpret_mode(True):
            return xb.call_jax(fn.forward, (q, k, v, segment_ids))

    @staticmethod
    def backward(ctx, d_out):
        with pltpu.force_tpu_interpret_mode(True):
            dq, dk, dv = xb.call_jax(ctx.fn.backward, (*ctx.saved_tensors, d_out))
        return None, dq, dk, dv, None


def flash_via_call_jax(q, k, v, masks, *, is_causal: bool, sizes: KernelBlockSizes):
    blocks = kernel_blocks(q.shape[2], sizes)
    inputs = prepare_kernel_inputs(q, k, v, masks, blocks)
    assert inputs.segment_ids is not None and inputs.bias is None
    fn = jax_flash_attention(blocks, is_causal)
    out = CallJax.apply(fn, inputs.q, inputs.k, inputs.v, inputs.segment_ids)
    return finish_kernel_output(out, inputs)


# --- the comparison ---------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    masks: AttentionMasks
    real: torch.Tensor  # [batch, heads, seq, dim] bool, on the host
    weight: torch.Tensor  # loss weights, 0 on pad positions


def make_case() -> Case:
    dev = torch_xla.device()
    g = torch.Generator().manual_seed(0)

    def leaf(heads):
        return torch.randn(BATCH, heads, SEQ, DIM, generator=g).to(dev).requires_grad_()

    q, k, v = leaf(HEADS), leaf(KV_HEADS), leaf(KV_HEADS)
    # Row 0: 13 pad tokens, then three documents, the middle one across the 128
    # boundary. Row 1: two documents (the second across the boundary), then 13
    # pad tokens. Under causality a real token sees only the pads before it
    # (row 0's); bidirectional attention also sees row 1's and the block padding.
    segments = torch.tensor([[0] * 70 + [1] * 80 + [2] * 50, [5] * 120 + [6] * 80])
    padding = torch.tensor([[0] * 13 + [1] * 187, [1] * 187 + [0] * 13])
    real = padding.bool()[:, None, :, None].expand(BATCH, HEADS, SEQ, DIM)
    weight = torch.randn(BATCH, HEADS, SEQ, DIM, generator=g) * real
    masks = AttentionMasks(padding=padding.to(dev), segment_ids=segments.to(dev))
    return Case(q, k, v, masks, real, weight.to(dev))


def assert_matches_reference(attention: Callable, causal: bool) -> None:
    case = make_case()
    blocks = kernel_blocks(SEQ, SIZES)
    assert (blocks.q, blocks.kv, blocks.padded_len) == (128, 128, 256)
    leaves = (case.q, case.k, case.v)
    out = attention(case.q, case.k, case.v, case.masks, is_causal=causal, sizes=SIZES)
    expected = reference_attention(case.q, case.k, case.v, case.masks, is_causal=causal)
    # The loss sees real positions only (pad outputs are unspecified), as in training.
    grads = torch.autograd.grad((out * case.weight).sum(), leaves)
    expected_grads = torch.autograd.grad((expected * case.weight).sum(), leaves)
    # Not vacuous: without the document mask, or without the padding mask, the
    # same inputs give another answer.
    partial_masks = [
        AttentionMasks(padding=case.masks.padding),
        AttentionMasks(segment_ids=case.masks.segment_ids),
    ]
    others = [
        reference_attention(case.q, case.k, case.v, m, is_causal=causal) for m in partial_masks
    ]
    torch_xla.sync()  # one graph for everything above

    assert out.shape == (BATCH, HEADS, SEQ, DIM)
    out, expected = out.cpu(), expected.cpu()
    torch.testing.assert_close(out[case.real], expected[case.real], **TOL)
    for other in others:
        assert (out - other.cpu())[case.real].abs().max() > 0.1
    for name, got, want in zip("qkv", grads, expected_grads, strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(got.cpu(), want.cpu(), **TOL, msg=lambda m, n=name: f"d{n}: {m}")


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_splash_attention_in_interpret_mode_matches_the_reference_forward_and_backward(causal):
    with interpreted():
        assert_matches_reference(attention_kernels.splash_attention, causal)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_jax_flash_kernel_on_prepared_inputs_matches_the_reference_forward_and_backward(causal):
    assert_matches_reference(flash_via_call_jax, causal)  # CallJax sets interpret mode itself


# --- what does not run here -------------------------------------------------------------


def test_only_the_hlo_interpreter_gets_a_pallas_kernel_through_call_jax():
    q = torch.randn(1, 1, 128, DIM).to(torch_xla.device())
    fn = jax_flash_attention(kernel_blocks(128, SIZES), True)
    args = (q, q, q, torch.ones(1, 128, dtype=torch.int32).to(q.device))
    with pytest.raises(ValueError, match="Only interpret mode is supported on CPU backend"):
        xb.call_jax(fn.forward, args)
    with (
        pltpu.force_tpu_interpret_mode(pltpu.InterpretParams()),
        pytest.raises(RuntimeError, match="XLA type not supported: 17"),
    ):
        xb.call_jax(fn.forward, args)  # the Mosaic TPU interpreter's host-callback tokens
    with pltpu.force_tpu_interpret_mode(True):
        out = xb.call_jax(fn.forward, args)
    expected = reference_attention(q, q, q, AttentionMasks(), is_causal=True)
    torch.testing.assert_close(out.cpu(), expected.cpu(), **TOL)


def test_torch_xla_flash_wrapper_needs_a_mosaic_kernel_even_in_interpret_mode():
    case = make_case()
    with interpreted(), pytest.raises(TypeError, match="_xla_tpu_custom_call"):
        attention_kernels.flash_attention(
            case.q, case.k, case.v, case.masks, is_causal=True, sizes=SIZES
        )
