"""The data pipeline: real text, a real tokenizer, packing, per-host splits."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections import Counter
from pydoc_data.topics import topics

import numpy as np
import pytest
import torch

from xlafw.data import (
    SHAKESPEARE_TEXTS,
    DataPipeline,
    DocumentBoundaries,
    HostShard,
    LocalFiles,
    SentencePieceTokenizer,
    StreamPosition,
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
    rows = [row.input_ids for row in itertools.islice(pipeline.rows(), len(expected) // 16)]
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


@pytest.mark.parametrize("sample_by", ["line", "paragraph", "document"])
def test_text_files_split_documents_exactly_as_the_datasets_text_builder(sample_by):
    import datasets

    source = TextFiles(paths=(SHAKESPEARE_TEXTS,), sample_by=sample_by)
    stream = datasets.load_dataset(
        "text",
        data_files=source.resolved_paths(),
        sample_by=sample_by,
        split="train",
        streaming=True,
    )
    theirs = [r["text"] for r in stream if r["text"].strip()]
    assert list(source.documents(0, 1)) == theirs


def test_paragraphs_split_across_read_chunks_are_whole(tmp_path):
    import random

    from xlafw.data.sources import _paragraphs

    rng = random.Random(0)
    lines = [rng.choice(["", "", "a", "bb b", "ccc cc c"]) for _ in range(400)]
    text = "\n".join(lines) + rng.choice(["", "\n", "\n\n"])
    (tmp_path / "a.txt").write_text(text)
    for chunk_chars in (1, 2, 3, 7, 64, 1 << 20):
        with open(tmp_path / "a.txt") as f:
            assert list(_paragraphs(f, chunk_chars)) == text.split("\n\n"), chunk_chars


def test_shuffled_text_is_a_seeded_permutation_and_hosts_stay_disjoint():
    def source(seed):
        return TextFiles(paths=(SHAKESPEARE_TEXTS,), shuffle_buffer=1000, seed=seed)

    plain = list(TextFiles(paths=(SHAKESPEARE_TEXTS,)).documents(0, 1))
    shuffled = list(source(0).documents(0, 1))
    assert Counter(shuffled) == Counter(plain) and shuffled != plain
    assert list(source(0).documents(0, 1)) == shuffled  # the same every run
    assert list(source(1).documents(0, 1)) != shuffled
    hosts = [Counter(source(0).documents(rank, 3)) for rank in range(3)]
    assert sum(hosts, Counter()) == Counter(plain)


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


def test_segment_ids_change_exactly_after_eos_and_positions_restart_there(tokenizer):
    docs = [f"Paragraph {i}: " + "to be or not to be " * (i % 5) for i in range(30)]
    pipeline = DataPipeline(
        ListSource(docs),
        tokenizer,
        seq_len=24,
        global_batch_size=2,
        document_boundaries=DocumentBoundaries.SEGMENTED,
    )
    batch = next(iter(pipeline))
    assert set(batch) == {"input_ids", "labels", "segment_ids", "position_ids"}
    for ids, segments, positions in zip(
        batch["input_ids"], batch["segment_ids"], batch["position_ids"], strict=True
    ):
        after_eos = torch.cat([torch.tensor([False]), ids[:-1] == tokenizer.eos_id])
        changes = torch.cat([torch.tensor([False]), segments[1:] != segments[:-1]])
        assert torch.equal(changes, after_eos)
        assert segments[0] == 1 and positions[0] == 0
        starts = after_eos | (torch.arange(24) == 0)
        expected = torch.arange(24) - torch.cummax(torch.where(starts, torch.arange(24), 0), 0)[0]
        assert torch.equal(positions, expected)


def test_segmented_pipeline_yields_the_same_tokens_as_the_plain_one(tokenizer):
    docs = [f"Line {i} " * (1 + i % 4) for i in range(25)]
    plain = next(iter(DataPipeline(ListSource(docs), tokenizer, 16, 4)))
    segmented = next(
        iter(DataPipeline(ListSource(docs), tokenizer, 16, 4, DocumentBoundaries.SEGMENTED))
    )
    assert torch.equal(plain["input_ids"], segmented["input_ids"])


def test_restored_segmented_pipeline_continues_exactly(tokenizer):
    docs = [f"Scene {i}. " + "Exit, pursued by a bear. " * (i % 6) for i in range(9)]
    make = lambda: DataPipeline(  # noqa: E731
        ListSource(docs), tokenizer, 16, 2, DocumentBoundaries.SEGMENTED
    )
    straight = make()
    batches = list(itertools.islice(iter(straight), 10))
    resumed = make()
    resumed.restore(straight.position_after(4), batches=4)
    for a, b in zip(batches[4:], itertools.islice(iter(resumed), 6), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def _write_jsonl_shards(directory, docs, shards):
    for shard in range(shards):
        with open(directory / f"part-{shard}.jsonl", "w") as f:
            for doc in docs[shard::shards]:
                f.write(json.dumps({"text": doc, "id": 0}) + "\n")
    return str(directory / "part-*.jsonl")


@pytest.mark.parametrize("shards", [2, 3])  # 3 files on 2 hosts: every-Nth example
def test_json_lines_hosts_read_disjoint_records_that_cover_the_stream(tmp_path, shards):
    docs = list(topics.values())
    source = LocalFiles(paths=(_write_jsonl_shards(tmp_path, docs, shards),), format="json")
    hosts = [Counter(source.documents(rank, 2)) for rank in range(2)]
    assert hosts[0] + hosts[1] == Counter(source.documents(0, 1)) == Counter(docs)
    assert min(sum(h.values()) for h in hosts) >= len(docs) // 2 - 1


def test_parquet_hosts_read_disjoint_rows_that_cover_the_stream(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = [f"{name}: {text}" for name, text in topics.items()]  # unique documents
    pq.write_table(pa.table({"body": docs}), tmp_path / "topics.parquet", row_group_size=16)
    source = LocalFiles(paths=(str(tmp_path / "*.parquet"),), format="parquet", text_field="body")
    hosts = [list(source.documents(rank, 2)) for rank in range(2)]
    assert not set(hosts[0]) & set(hosts[1])
    assert Counter(hosts[0] + hosts[1]) == Counter(docs)


def test_stream_position_survives_the_checkpoint_json_round_trip():
    position = StreamPosition(
        document=7, offset=3, sources=(StreamPosition(1, 2, 0, 50), StreamPosition(0, 9, 0, 12))
    )
    assert StreamPosition(**json.loads(json.dumps(dataclasses.asdict(position)))) == position
