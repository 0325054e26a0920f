"""The Llama model: shapes, masking, loss, and agreement with transformers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xlafw.models import AttentionMasks, Llama3RopeScaling, LlamaConfig, LlamaForCausalLM
from xlafw.models.attention import reference_attention

CONFIG = LlamaConfig(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rope_scaling=Llama3RopeScaling(original_max_position_embeddings=16),
)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return LlamaForCausalLM(CONFIG).eval()


def test_forward_returns_logits_of_shape_batch_seq_vocab(model):
    ids = torch.randint(0, 97, (3, 11))
    assert model(ids).logits.shape == (3, 11, 97)


def test_parameter_names_follow_hugging_face_llama(model):
    names = set(dict(model.named_parameters()))
    assert "model.layers.1.self_attn.q_proj.weight" in names
    assert "model.layers.0.mlp.down_proj.weight" in names
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} <= names


def test_future_tokens_do_not_change_earlier_logits(model):
    ids = torch.randint(0, 97, (1, 10))
    changed = ids.clone()
    changed[0, 6:] = (changed[0, 6:] + 1) % 97
    a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_loss_ignores_label_minus_100_positions(model):
    ids = torch.randint(0, 97, (2, 9))
    labels = ids.clone()
    labels[:, 4:] = -100
    out = model(ids, labels=labels)
    logits = model(ids).logits[:, :-1]
    expected = F.cross_entropy(logits[:, :3].reshape(-1, 97), ids[:, 1:4].reshape(-1))
    torch.testing.assert_close(out.loss, expected)
    assert out.num_target_tokens.item() == 2 * 3


def _naive_attention(q, k, v, mask):
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, -1) @ v


def test_reference_attention_equals_naive_softmax_with_repeated_kv():
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 4, 6, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    out = reference_attention(q, k, v, AttentionMasks(), is_causal=True)
    torch.testing.assert_close(out, _naive_attention(q, k, v, causal))


def test_attention_bias_is_added_to_the_scores():
    torch.manual_seed(2)
    q, k, v = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    bias = torch.randn(1, 2, 5, 5)
    out = reference_attention(q, k, v, AttentionMasks(bias=bias), is_causal=False)
    expected = torch.softmax(q @ k.transpose(-1, -2) / 2.0 + bias, -1) @ v
    torch.testing.assert_close(out, expected)


def test_segments_and_padding_never_produce_nan_and_isolate_documents():
    torch.manual_seed(3)
    q, k, v = (torch.randn(1, 2, 6, 4, requires_grad=True) for _ in range(3))
    segments = torch.tensor([[0, 0, 0, 1, 1, 1]])
    padding = torch.tensor([[1, 1, 1, 1, 1, 0]])
    out = reference_attention(
        q, k, v, AttentionMasks(padding=padding, segment_ids=segments), is_causal=True
    )
    assert torch.isfinite(out).all()
    out[:, :, 3:5].sum().backward()  # loss on document 1's real tokens only
    assert (v.grad[:, :, :3] == 0).all() and (k.grad[:, :, :3] == 0).all()


def test_logits_match_transformers_llama_on_the_same_weights(model):
    import transformers

    hf_config = transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=CONFIG.rope_theta,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
        max_position_embeddings=64,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        rms_norm_eps=CONFIG.rms_norm_eps,
    )
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    missing, unexpected = hf.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all("rotary" in m for m in missing)
    ids = torch.randint(0, 97, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, hf(ids).logits.float(), atol=1e-5, rtol=1e-5)
