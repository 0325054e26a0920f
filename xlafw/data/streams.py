"""Tokenized document streams and the positions that make them resumable.

A stream is an endless iterator of ``TokenizedDocument``: the ids of one
document followed by EOS, with the exact ``StreamPosition`` of its first and
just past its last token. The packer cuts rows out of a stream; the position of
the first unused token is what a checkpoint records, and restarting the stream
at that position continues at the next token.

A single source's position is ``(epoch, document, offset)``. A ``Mixture``'s
position additionally holds one position per source and the tokens each source
has supplied (``sources``, ``tokens``); see ``xlafw.data.mixture``.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np

from xlafw import progress
from xlafw.data.tokenizers import Tokenizer

TOKENIZE_CHUNK_DOCS = 256


@dataclasses.dataclass(frozen=True)
class StreamPosition:
    """Where this host's stream stands: the next unread token.

    Attributes:
      epoch: passes over the data completed before this one.
      document: index of the document (in this host's stream for the epoch).
      offset: tokens of that document already used.
      tokens: tokens of whole documents this stream has supplied before
        ``document``, over all epochs. Mixtures schedule sources by it; a single
        source leaves it 0.
      sources: a mixture's per-source positions (each with its ``tokens``), in
        the mixture's source order; empty for a single source. JSON lists of
        dicts (a checkpoint's form) are converted back on construction.
    """

    epoch: int = 0
    document: int = 0
    offset: int = 0
    tokens: int = 0
    sources: tuple[StreamPosition, ...] = ()

    def __post_init__(self):
        sources = tuple(
            s if isinstance(s, StreamPosition) else StreamPosition(**s) for s in self.sources
        )
        object.__setattr__(self, "sources", sources)


@dataclasses.dataclass(frozen=True)
class TokenizedDocument:
    """One document's remaining tokens and where they sit in the stream.

    Attributes:
      tokens: the ids still to be used, ending with EOS.
      start: position of ``tokens[0]``.
      end: position just after the last token (the next document's start).
    """

    tokens: np.ndarray
    start: StreamPosition
    end: StreamPosition


class DocumentSource(Protocol):
    """Anything that yields one host's documents once, in a fixed order."""

    def documents(self, process_index: int, process_count: int) -> Iterator[str]: ...


class RecordSource(Protocol):
    """Anything that yields one host's records (dicts) once, in a fixed order."""

    def records(self, process_index: int, process_count: int) -> Iterator[dict[str, Any]]: ...


def tokenized_documents(
    source: DocumentSource,
    tokenizer: Tokenizer,
    process_index: int,
    process_count: int,
    start: StreamPosition = StreamPosition(),
) -> Iterator[TokenizedDocument]:
    """Yields ``source``'s documents as tokens + EOS from ``start``, epoch after epoch.

    Documents before ``start`` are skipped as text, without tokenizing them.

    Raises:
      ValueError: when an epoch yields no document for this host.
    """
    eos = tokenizer.eos_id
    for epoch in itertools.count(start.epoch):
        skip = start.document if epoch == start.epoch else 0
        docs = progress.skip(
            source.documents(process_index, process_count),
            skip,
            f"data: skipping to document {skip:,} of epoch {epoch} (resume)",
            "documents",
        )
        index = skip
        while chunk := list(itertools.islice(docs, TOKENIZE_CHUNK_DOCS)):
            for ids in tokenizer.encode_batch(chunk):
                tokens = np.asarray([*ids, eos], dtype=np.int64)
                offset = start.offset if (epoch, index) == (start.epoch, start.document) else 0
                yield TokenizedDocument(
                    tokens[offset:],
                    StreamPosition(epoch, index, offset),
                    StreamPosition(epoch, index + 1, 0),
                )
                index += 1
        if index == 0:
            raise ValueError(
                f"the data source {source!r} yielded no documents for host "
                f"{process_index} of {process_count}. Fix: check its paths, or use "
                "fewer hosts than documents."
            )
