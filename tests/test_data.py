"""The data pipeline: real text, a real tokenizer, packing, per-host splits."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
import torch

from xlafw.data import (
    SHAKESPEARE_TEXTS,
    DataPipeline,
    HostShard,
    SentencePieceTokenizer,
    TextFiles,
)
from xlafw.data.files import MissingFileError, resolve


class ListSource:
    """Documents from a list, split across hosts like the real sources."""

    def __init__(self, docs):
        self.docs = docs

    def documents(self, process_index, process_count):
        return iter(self.docs[process_index::process_count])


@pytest.fixture(scope="module")
def tokenizer():
    return SentencePieceTokenizer()


def test_default_tokenizer_is_mistral_32k_sentencepiece(tokenizer):
    assert tokenizer.vocab_size == 32000
    assert tokenizer.encode_batch(["Hello world"]) == [[22557, 1526]]


def test_shakespeare_ships_42_texts():
    assert len(resolve(SHAKESPEARE_TEXTS)) == 42


def test_missing_package_error_names_the_package_and_fix():
    with pytest.raises(MissingFileError, match=r"not_a_package.*make env"):
        resolve("pkg:not_a_package/x.txt")


def test_packing_loses_no_token_and_keeps_shapes_fixed(tokenizer):
    docs = [f"Document number {i} says {'hello ' * (i % 7)}." for i in range(40)]
    pipeline = DataPipeline(ListSource(docs), tokenizer, seq_len=16, global_batch_size=2)
    expected = np.concatenate([[*ids, tokenizer.eos_id] for ids in tokenizer.encode_batch(docs)])
    rows = [row for row, _ in itertools.islice(pipeline.rows(), len(expected) // 16)]
    assert all(r.shape == (16,) for r in rows)
    np.testing.assert_array_equal(np.concatenate(rows), expected[: 16 * len(rows)])
    batch = next(iter(pipeline))
    assert batch["input_ids"].shape == (2, 16)
    assert (batch["labels"] == batch["input_ids"]).all()


def test_hosts_read_disjoint_documents_that_cover_the_stream():
    source = TextFiles(paths=(SHAKESPEARE_TEXTS,), sample_by="paragraph")
    everything = Counter(source.documents(0, 1))
    hosts = [Counter(source.documents(rank, 2)) for rank in range(2)]
    assert hosts[0] + hosts[1] == everything
    assert min(sum(h.values()) for h in hosts) > 0.3 * sum(everything.values())


def test_global_batch_must_split_evenly_over_hosts(tokenizer):
    with pytest.raises(ValueError, match="not divisible"):
        DataPipeline(ListSource(["a"]), tokenizer, 8, global_batch_size=3, host=HostShard(0, 2))


@pytest.mark.parametrize("num_docs", [60, 7])  # 7 documents: several epochs in 12 batches
def test_restored_pipeline_continues_at_the_exact_next_token(tokenizer, num_docs):
    docs = [f"Document {i}: " + "word " * (i % 11) for i in range(num_docs)]
    straight = DataPipeline(ListSource(docs), tokenizer, seq_len=16, global_batch_size=2)
    batches = list(itertools.islice(iter(straight), 12))
    resumed = DataPipeline(ListSource(docs), tokenizer, seq_len=16, global_batch_size=2)
    resumed.restore(straight.position_after(5), batches=5)
    again = list(itertools.islice(iter(resumed), 7))
    for a, b in zip(batches[5:], again, strict=False):
        assert torch.equal(a["input_ids"], b["input_ids"])
    assert resumed.position_after(12) == straight.position_after(12)
