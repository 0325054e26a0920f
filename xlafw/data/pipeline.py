"""The DataPipeline: documents -> tokens -> packed fixed-shape batches.

Shapes never change (every batch is ``[per_host_batch, seq_len]``), so the
train step compiles once. Documents are tokenized in chunks, joined with EOS
between them and cut into rows of exactly ``seq_len`` tokens; a document that
does not fit carries over to the next row. The stream restarts when it ends
(one pass = one epoch).

The pipeline remembers, for every batch it produced, the exact stream position
after it (epoch, document, token offset), so a checkpoint can record where the
consumed data ends and a restart resumes at the next token: no batch repeated,
none skipped. Restoring skips documents as text, without tokenizing them.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch

from xlafw.data.tokenizers import Tokenizer

TOKENIZE_CHUNK_DOCS = 256
# Stream positions remembered per produced batch; more than the loader prefetches.
POSITIONS_KEPT = 256


@dataclasses.dataclass(frozen=True)
class StreamPosition:
    """Where this host's stream stands: the next unread token.

    Attributes:
      epoch: passes over the data completed before this one.
      document: index of the document (in this host's stream for the epoch).
      offset: tokens of that document already used.
    """

    epoch: int = 0
    document: int = 0
    offset: int = 0


class DocumentSource(Protocol):
    def documents(self, process_index: int, process_count: int) -> Iterator[str]: ...


@dataclasses.dataclass(frozen=True)
class HostShard:
    """Which part of the global batch this process supplies.

    Attributes:
      process_index: this host's rank.
      process_count: number of hosts.
    """

    process_index: int = 0
    process_count: int = 1


class DataPipeline:
    """Packed causal-LM batches for one host.

    Args:
      source: where documents come from.
      tokenizer: turns documents into ids.
      seq_len: tokens per row.
      global_batch_size: rows per step over all hosts; each host yields
        ``global_batch_size // process_count`` of them.
      host: this process's share; the trainer fills it from the runtime.
    """

    def __init__(
        self,
        source: DocumentSource,
        tokenizer: Tokenizer,
        seq_len: int,
        global_batch_size: int,
        host: HostShard = HostShard(),
    ):
        if global_batch_size % host.process_count:
            raise ValueError(
                f"global_batch_size={global_batch_size} is not divisible by "
                f"{host.process_count} hosts"
            )
        self.source = source
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        self.global_batch_size = global_batch_size
        self.host = host
        self.host_batch_size = global_batch_size // host.process_count
        self._start = StreamPosition()
        self._start_batch = 0
        self._positions: dict[int, StreamPosition] = {}

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_len

    def restore(self, position: StreamPosition, batches: int) -> None:
        """Resumes at ``position`` after ``batches`` batches (from a checkpoint)."""
        self._start = position
        self._start_batch = batches

    def position_after(self, batch: int) -> StreamPosition:
        """Where the stream stands once batch number ``batch`` (1-based) was produced.

        The device loader prefetches ahead of the step loop, so the trainer asks
        for the position after the batch it actually consumed.
        """
        return self._positions[batch]

    def _documents(self, start: StreamPosition) -> Iterator[tuple[StreamPosition, np.ndarray]]:
        """Yields ``(position of the first token, tokens + EOS)`` per document, forever."""
        eos = self.tokenizer.eos_id
        for epoch in itertools.count(start.epoch):
            skip = start.document if epoch == start.epoch else 0
            docs = itertools.islice(
                self.source.documents(self.host.process_index, self.host.process_count), skip, None
            )
            index = skip
            while chunk := list(itertools.islice(docs, TOKENIZE_CHUNK_DOCS)):
                for ids in self.tokenizer.encode_batch(chunk):
                    tokens = np.asarray([*ids, eos], dtype=np.int64)
                    offset = start.offset if (epoch, index) == (start.epoch, start.document) else 0
                    yield StreamPosition(epoch, index, offset), tokens[offset:]
                    index += 1
            if index == 0:
                raise ValueError("the data source yielded no documents for this host")

    def rows(
        self, start: StreamPosition = StreamPosition()
    ) -> Iterator[tuple[np.ndarray, StreamPosition]]:
        """Yields packed ``[seq_len]`` rows and the position just after each.

        No token is dropped: a document that does not fit carries over to the next
        row.
        """
        pending: collections.deque[tuple[StreamPosition, np.ndarray]] = collections.deque()
        available = 0
        for position, tokens in self._documents(start):
            pending.append((position, tokens))
            available += len(tokens)
            while available >= self.seq_len:
                parts, need = [], self.seq_len
                while need:
                    head, head_tokens = pending[0]
                    take = min(need, len(head_tokens))
                    parts.append(head_tokens[:take])
                    need -= take
                    if take == len(head_tokens):
                        pending.popleft()
                        after = StreamPosition(head.epoch, head.document + 1, 0)
                    else:
                        after = dataclasses.replace(head, offset=head.offset + take)
                        pending[0] = (after, head_tokens[take:])
                available -= self.seq_len
                yield np.concatenate(parts), after

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        rows = self.rows(self._start)
        batch = self._start_batch
        while True:
            block, position = [], None
            for _ in range(self.host_batch_size):
                row, position = next(rows)
                block.append(row)
            batch += 1
            self._positions[batch] = position
            self._positions.pop(batch - POSITIONS_KEPT, None)
            ids = torch.from_numpy(np.stack(block))
            yield {"input_ids": ids, "labels": ids.clone()}
