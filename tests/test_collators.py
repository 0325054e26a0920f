"""Collators and the SFT pipeline: loss masks, fixed shapes, truncation, resume."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from xlafw.data import (
    ChatMessages,
    LocalFiles,
    PromptCompletion,
    SentencePieceTokenizer,
    SftPipeline,
    Truncation,
)
from xlafw.data.collators import IGNORE, SftEncoder, Span, sft_batch

# Real lines from Hamlet, as question/answer pairs of varied length.
PAIRS = [
    ("Who's there?", "Nay, answer me: stand, and unfold yourself."),
    ("What, has this thing appear'd again to-night?", "I have seen nothing."),
    ("Is it not like the king?", "As thou art to thyself."),
    ("What art thou that usurp'st this time of night?", "It is offended."),
    ("How now, Horatio! you tremble and look pale.", "Before my God, I might not this believe."),
    ("Speak to it, Horatio.", "Stay! speak, speak! I charge thee, speak!"),
    ("Tis gone, and will not answer.", "Good now, sit down, and tell me, he that knows."),
]


@pytest.fixture(scope="module")
def tokenizer():
    return SentencePieceTokenizer()


@pytest.fixture
def qa_files(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in PAIRS))
    return LocalFiles(paths=(str(path),))


def test_sft_labels_are_ignored_exactly_on_prompt_and_pad_positions(tokenizer, qa_files):
    pipeline = SftPipeline(qa_files, tokenizer, seq_len=48, global_batch_size=4)
    batch = next(iter(pipeline))
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    for row, (prompt, completion) in enumerate(PAIRS[:4]):
        prompt_ids, completion_ids = tokenizer.encode_batch([prompt, completion])
        prompt_len = 1 + len(prompt_ids)  # BOS + prompt
        real = prompt_len + len(completion_ids) + 1  # + completion + EOS
        labels, ids = batch["labels"][row], batch["input_ids"][row]
        assert (labels[:prompt_len] == IGNORE).all() and (labels[real:] == IGNORE).all()
        assert torch.equal(labels[prompt_len:real], ids[prompt_len:real])
        assert labels[real - 1] == tokenizer.eos_id
        assert ids[0] == tokenizer.bos_id
        assert torch.equal(batch["attention_mask"][row], (torch.arange(48) < real).long())
        assert (ids[real:] == tokenizer.pad_id).all()


def test_sft_batches_always_have_the_fixed_shape(tokenizer, qa_files):
    pipeline = SftPipeline(qa_files, tokenizer, seq_len=40, global_batch_size=3)
    shapes = {tuple(t.shape) for b in itertools.islice(iter(pipeline), 10) for t in b.values()}
    assert shapes == {(3, 40)}


def test_chat_trains_only_on_assistant_turns_each_ending_with_eos(tokenizer):
    record = {
        "messages": [
            {"role": "system", "content": "Answer as Horatio."},
            {"role": "user", "content": "Who's there?"},
            {"role": "assistant", "content": "Friends to this ground."},
            {"role": "user", "content": "And liegemen to the Dane?"},
            {"role": "assistant", "content": "Give you good night."},
        ]
    }
    spans = ChatMessages().spans(record)
    assert "".join(s.text for s in spans) == (
        "<|system|>\nAnswer as Horatio.\n<|user|>\nWho's there?\n<|assistant|>\n"
        "Friends to this ground.\n<|user|>\nAnd liegemen to the Dane?\n<|assistant|>\n"
        "Give you good night."
    )
    example = SftEncoder(tokenizer, seq_len=128).encode(spans)
    trained = [
        int(i)
        for i, label in zip(example.input_ids, example.labels, strict=False)
        if label != IGNORE
    ]
    first, second = tokenizer.encode_batch(["Friends to this ground.", "Give you good night."])
    assert trained == [*first, tokenizer.eos_id, *second, tokenizer.eos_id]


def test_right_truncation_keeps_the_first_seq_len_tokens(tokenizer):
    spans = [Span("Who's there?", False), Span("Nay, answer me: stand. " * 10, True)]
    full = SftEncoder(tokenizer, seq_len=1000).encode(spans)
    cut = SftEncoder(tokenizer, seq_len=16, truncation=Truncation.RIGHT).encode(spans)
    assert torch.equal(torch.from_numpy(cut.input_ids), torch.from_numpy(full.input_ids[:16]))
    assert SftEncoder(tokenizer, seq_len=16, truncation=Truncation.DROP).encode(spans) is None


def test_examples_without_a_loss_token_after_truncation_are_dropped(tokenizer):
    spans = [Span("Who's there? " * 20, False), Span("Friends.", True)]
    assert SftEncoder(tokenizer, seq_len=16).encode(spans) is None


def test_pipeline_skips_dropped_examples_and_keeps_shapes(tokenizer, tmp_path):
    path = tmp_path / "qa.jsonl"
    long = {"prompt": "Speak! " * 50, "completion": "I will."}
    path.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [long] + [{"prompt": p, "completion": c} for p, c in PAIRS]
        )
    )
    pipeline = SftPipeline(
        LocalFiles(paths=(str(path),)), tokenizer, 32, 2, truncation=Truncation.DROP
    )
    batch = next(iter(pipeline))
    assert batch["input_ids"].shape == (2, 32)
    assert pipeline.position_after(1).document == 3  # record 0 dropped, 1 and 2 kept


def test_padding_uses_the_fixed_length_not_the_longest_example():
    examples = [
        SftEncoder(SentencePieceTokenizer(), 64).encode([Span("a", False), Span("b", True)])
    ]
    assert sft_batch(examples, seq_len=64, pad_id=0)["input_ids"].shape == (1, 64)


def test_restored_sft_pipeline_continues_exactly_across_epochs(tokenizer, qa_files):
    make = lambda: SftPipeline(qa_files, tokenizer, 40, 3, format=PromptCompletion())  # noqa: E731
    straight = make()
    batches = list(itertools.islice(iter(straight), 8))  # 24 examples: 3+ epochs of 7
    resumed = make()
    resumed.restore(straight.position_after(3), batches=3)
    for a, b in zip(batches[3:], itertools.islice(iter(resumed), 5), strict=True):
        assert all(torch.equal(a[key], b[key]) for key in a)
    assert resumed.position_after(8) == straight.position_after(8)
