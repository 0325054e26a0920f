"""Weighted mixtures of sources, weighted by tokens.

``Mixture(sources=(a, b), weights=(0.8, 0.2))`` delivers 80% of its tokens from
``a`` and 20% from ``b``, whatever the sources' document lengths.

Why not ``datasets.interleave_datasets``: it samples *examples* with the given
probabilities, so a source of long documents gets more than its share of
tokens (and torchprime's fork ignored the weights altogether). Here the next
document always comes from the source furthest below its share: the one with
the smallest ``(tokens supplied + half its next document) / weight`` (the half
centres the error: taking a long document overshoots its share, not taking it
undershoots). This is deterministic (no seed is needed; shuffle within each
source with its own ``shuffle_buffer``), the token shares are off by at most
one document at any moment, and resuming needs only each source's position and
token count, which ``StreamPosition`` holds: the next document of every source
is read again from there.

Each source cycles through its own epochs independently: a small source with a
large weight is repeated more often (upsampled), a large one with a small weight
may never finish an epoch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from xlafw.arguments import InvalidArgument, number
from xlafw.data.streams import (
    DocumentSource,
    StreamPosition,
    TokenizedDocument,
    tokenized_documents,
)
from xlafw.data.tokenizers import Tokenizer


@dataclasses.dataclass(frozen=True)
class Mixture:
    """Documents from several sources, with token shares set by ``weights``.

    Attributes:
      sources: the sources (``TextFiles``, ``LocalFiles``, ``HubDataset``...).
      weights: one positive weight per source; normalized, so ``(4, 1)`` and
        ``(0.8, 0.2)`` are the same mixture.
    """

    sources: tuple[DocumentSource, ...]
    weights: tuple[float, ...]

    def __post_init__(self):
        if not isinstance(self.sources, tuple) or not self.sources:
            raise InvalidArgument("sources", self.sources, "must be a non-empty tuple of sources.")
        if not isinstance(self.weights, tuple) or len(self.sources) != len(self.weights):
            raise InvalidArgument(
                "weights",
                self.weights,
                f"the mixture has {len(self.sources)} sources; give one weight per source.",
            )
        if any(number("weights", w, above=0) for w in self.weights):
            raise InvalidArgument(
                "weights",
                self.weights,
                "every weight must be a finite positive number. Fix: drop a source instead "
                "of giving it weight 0.",
            )

    def describe(self) -> str:
        """One line for ``--dry_run``: each source with its token share."""
        total = sum(self.weights)
        parts = [
            f"{w / total:.0%} {getattr(s, 'describe', s.__repr__)()}"
            for s, w in zip(self.sources, self.weights, strict=True)
        ]
        return "mixture by tokens of " + "; ".join(parts)

    def documents(self, process_index: int, process_count: int) -> Iterator[str]:
        raise TypeError(
            "a Mixture is weighted by tokens, so it has no plain document stream; "
            "read it through tokenized_stream(...) (DataPipeline does)."
        )


def mixed_documents(
    mixture: Mixture,
    tokenizer: Tokenizer,
    process_index: int,
    process_count: int,
    start: StreamPosition = StreamPosition(),
) -> Iterator[TokenizedDocument]:
    """Yields the mixture's documents from ``start``, forever.

    The positions yielded are mixture positions: ``document`` counts documents
    of the mixture, ``offset`` is within the current document, ``sources`` holds
    each source's next document and the tokens it supplied before it.
    """
    weights = [w / sum(mixture.weights) for w in mixture.weights]
    positions = list(start.sources) or [StreamPosition()] * len(mixture.sources)
    if len(positions) != len(mixture.sources):
        raise ValueError(
            f"the restored position has {len(positions)} sources, the mixture "
            f"{len(mixture.sources)}. Fix: resume with the mixture the checkpoint used."
        )
    streams = [
        tokenized_documents(source, tokenizer, process_index, process_count, position)
        for source, position in zip(mixture.sources, positions, strict=True)
    ]
    heads = [next(stream) for stream in streams]
    document, offset = start.document, start.offset
    while True:
        chosen = min(
            range(len(weights)),
            key=lambda i: (positions[i].tokens + len(heads[i].tokens) / 2) / weights[i],
        )
        before = StreamPosition(document=document, offset=offset, sources=tuple(positions))
        full, heads[chosen] = heads[chosen], next(streams[chosen])
        positions[chosen] = dataclasses.replace(
            full.end, tokens=positions[chosen].tokens + len(full.tokens)
        )
        document += 1
        after = StreamPosition(document=document, sources=tuple(positions))
        yield TokenizedDocument(full.tokens[offset:], before, after)
        offset = 0


def tokenized_stream(
    source: DocumentSource | Mixture,
    tokenizer: Tokenizer,
    process_index: int,
    process_count: int,
    start: StreamPosition = StreamPosition(),
) -> Iterator[TokenizedDocument]:
    """The tokenized document stream of a single source or a mixture."""
    if isinstance(source, Mixture):
        return mixed_documents(source, tokenizer, process_index, process_count, start)
    return tokenized_documents(source, tokenizer, process_index, process_count, start)
