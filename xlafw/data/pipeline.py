"""The DataPipeline: documents -> tokens -> packed fixed-shape batches.

Shapes never change (every batch is ``[per_host_batch, seq_len]``), so the
train step compiles once. Documents are tokenized in chunks, joined with EOS
between them and cut into rows of exactly ``seq_len`` tokens; a document that
does not fit carries over to the next row. The stream restarts when it ends
(one pass = one epoch).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch

from xlafw.data.tokenizers import Tokenizer

TOKENIZE_CHUNK_DOCS = 256


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

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_len

    def _token_stream(self) -> Iterator[np.ndarray]:
        """Yields token arrays (documents + EOS), epoch after epoch."""
        eos = self.tokenizer.eos_id
        for _epoch in itertools.count():
            docs = self.source.documents(self.host.process_index, self.host.process_count)
            produced = False
            while chunk := list(itertools.islice(docs, TOKENIZE_CHUNK_DOCS)):
                for ids in self.tokenizer.encode_batch(chunk):
                    produced = True
                    yield np.asarray([*ids, eos], dtype=np.int64)
            if not produced:
                raise ValueError("the data source yielded no documents for this host")

    def rows(self) -> Iterator[np.ndarray]:
        """Yields packed ``[seq_len]`` rows; no token is dropped between rows."""
        buffer = np.empty(0, dtype=np.int64)
        for tokens in self._token_stream():
            buffer = np.concatenate([buffer, tokens])
            while len(buffer) >= self.seq_len:
                yield buffer[: self.seq_len]
                buffer = buffer[self.seq_len :]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        rows = self.rows()
        while True:
            block = np.stack([next(rows) for _ in range(self.host_batch_size)])
            ids = torch.from_numpy(block)
            yield {"input_ids": ids, "labels": ids.clone()}
