"""The DataPipeline: documents -> tokens -> packed fixed-shape batches.

Shapes never change (every batch is ``[per_host_batch, seq_len]``), so the
train step compiles once. Documents are tokenized in chunks, joined with EOS
between them and cut into rows of exactly ``seq_len`` tokens; a document that
does not fit carries over to the next row (``xlafw.data.packing``). The stream
restarts when it ends (one pass = one epoch). The source may be a ``Mixture``,
weighted by tokens (``xlafw.data.mixture``).

The pipeline remembers, for every batch it produced, the exact stream position
after it, so a checkpoint can record where the consumed data ends and a
restart resumes at the next token: no batch repeated, none skipped. Restoring
skips documents as text, without tokenizing them.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator

import torch

from xlafw.arguments import InvalidArgument, instance, integer, raise_invalid
from xlafw.data.collators import DocumentBoundaries, causal_lm_batch
from xlafw.data.mixture import Mixture, tokenized_stream
from xlafw.data.packing import PackedRow, pack_rows
from xlafw.data.streams import DocumentSource, StreamPosition
from xlafw.data.tokenizers import Tokenizer

# Stream positions remembered per produced batch; more than the loader prefetches.
POSITIONS_KEPT = 256

__all__ = ["DataPipeline", "HostShard", "StreamPosition"]


@dataclasses.dataclass(frozen=True)
class HostShard:
    """Which part of the global batch this process supplies.

    Attributes:
      process_index: this host's rank.
      process_count: number of hosts.
    """

    process_index: int = 0
    process_count: int = 1

    def __post_init__(self):
        raise_invalid(
            integer("process_count", self.process_count, at_least=1),
            integer("process_index", self.process_index, at_least=0),
        )
        if self.process_index >= self.process_count:
            raise InvalidArgument(
                "process_index",
                self.process_index,
                f"must be below {{process_count}}={self.process_count}.",
                related=("process_count",),
            )


class BatchPipeline:
    """What every pipeline shares: fixed-shape batches for one host, resumable.

    The stream position after each produced batch is remembered for checkpoints:
    the device loader prefetches ahead of the step loop, so the trainer asks for
    the position after the batch it actually consumed, not the latest.

    Args:
      source: where the data comes from.
      tokenizer: turns text into ids.
      seq_len: tokens per row.
      global_batch_size: rows per step over all hosts; each host yields
        ``global_batch_size // process_count`` of them.
      host: this process's share; the trainer fills it from the runtime.

    Raises:
      InvalidArgument: for a bad size or host, naming it.
      ValueError: when the batch does not split over the hosts.
    """

    def __init__(
        self, source, tokenizer: Tokenizer, seq_len: int, global_batch_size: int, host: HostShard
    ) -> None:
        raise_invalid(
            integer(
                "seq_len",
                seq_len,
                at_least=2,
                fix="tokens per row, at least one input and one target, e.g. 2048.",
            ),
            integer(
                "global_batch_size", global_batch_size, at_least=1, fix="rows per step, e.g. 8."
            ),
            None
            if hasattr(tokenizer, "encode_batch")
            else InvalidArgument("tokenizer", tokenizer, "must be a Tokenizer."),
            instance("host", host, HostShard, fix="the trainer fills it; do not set it."),
        )
        self.host_batch_size = check_host_split(global_batch_size, host)
        self.source = source
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        self.global_batch_size = global_batch_size
        self.host = host
        self._start = StreamPosition()
        self._start_batch = 0
        self._after: dict[int, StreamPosition] = {}

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_len

    def restore(self, position: StreamPosition, batches: int) -> None:
        """Resumes at ``position`` after ``batches`` batches (from a checkpoint)."""
        self._start, self._start_batch = position, batches

    def position_after(self, batch: int) -> StreamPosition:
        """Where the stream stands once batch number ``batch`` (1-based) was produced."""
        if batch == self._start_batch:
            return self._start
        return self._after[batch]

    def _record(self, batch: int, position: StreamPosition) -> None:
        self._after[batch] = position
        self._after.pop(batch - POSITIONS_KEPT, None)


def check_host_split(global_batch_size: int, host: HostShard) -> int:
    """Returns the rows per host; raises ValueError if the batch does not split."""
    if global_batch_size % host.process_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} is not divisible by "
            f"{host.process_count} hosts. Fix: make it a multiple of the host count."
        )
    return global_batch_size // host.process_count


class DataPipeline(BatchPipeline):
    """Packed causal-LM batches for one host.

    Yields ``input_ids`` and ``labels`` (equal: the model shifts), plus
    ``segment_ids`` and ``position_ids`` with ``DocumentBoundaries.SEGMENTED``;
    each ``[global_batch_size // process_count, seq_len]`` int64.

    Args:
      source: where documents come from: a source or a ``Mixture`` of them.
      tokenizer: turns documents into ids.
      seq_len: tokens per row.
      global_batch_size: rows per step over all hosts; each host yields
        ``global_batch_size // process_count`` of them.
      document_boundaries: whether batches carry segment and per-document
        position ids (attention stops at document boundaries) or not.
      host: this process's share; the trainer fills it from the runtime.
    """

    def __init__(
        self,
        source: DocumentSource | Mixture,
        tokenizer: Tokenizer,
        seq_len: int,
        global_batch_size: int,
        document_boundaries: DocumentBoundaries = DocumentBoundaries.IGNORED,
        host: HostShard = HostShard(),
    ):
        super().__init__(source, tokenizer, seq_len, global_batch_size, host)
        raise_invalid(
            instance("document_boundaries", document_boundaries, DocumentBoundaries),
            None
            if isinstance(source, Mixture) or hasattr(source, "documents")
            else InvalidArgument("source", source, "must be a document source or a Mixture."),
        )
        self.document_boundaries = document_boundaries

    def rows(self, start: StreamPosition = StreamPosition()) -> Iterator[PackedRow]:
        """Yields packed ``[seq_len]`` rows from ``start``, each with the position after it."""
        documents = tokenized_stream(
            self.source, self.tokenizer, self.host.process_index, self.host.process_count, start
        )
        return pack_rows(documents, self.seq_len)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        rows = self.rows(self._start)
        for batch in itertools.count(self._start_batch + 1):
            block = [next(rows) for _ in range(self.host_batch_size)]
            self._record(batch, block[-1].end)
            yield causal_lm_batch(block, self.document_boundaries)
