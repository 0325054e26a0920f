"""Packing: a tokenized document stream cut into rows of exactly ``seq_len`` tokens.

Documents are laid end to end (each already ends with EOS) and cut every
``seq_len`` tokens; a document that does not fit continues in the next row, so
no token is dropped. Each row also carries where its documents start:

- ``segment_ids``: 1 for the row's first (possibly continued) document, +1
  after every EOS. The model attends only within a segment. 0 is never used in
  a packed row; it is left for padding.
- ``position_ids``: 0, 1, 2... restarting after every EOS *and* at the start of
  every row, also for a document continued from the previous row. Under RoPE
  only differences of positions matter, so restarting the continued part
  changes nothing within a row, and positions stay below ``seq_len`` (and so
  below ``max_position_embeddings``) however long a document is.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterator

import numpy as np

from xlafw.data.streams import StreamPosition, TokenizedDocument


@dataclasses.dataclass(frozen=True)
class PackedRow:
    """One packed row and the stream position right after it.

    Attributes:
      input_ids: ``[seq_len]`` token ids.
      segment_ids: ``[seq_len]`` document number within the row, from 1.
      position_ids: ``[seq_len]`` position within the document part, from 0.
      end: position of the first token not in this row (or any before it).
    """

    input_ids: np.ndarray
    segment_ids: np.ndarray
    position_ids: np.ndarray
    end: StreamPosition


def pack_rows(documents: Iterator[TokenizedDocument], seq_len: int) -> Iterator[PackedRow]:
    """Yields rows of exactly ``seq_len`` tokens from ``documents``, forever.

    The concatenation of the rows is the concatenation of the documents' tokens.
    """
    pending: collections.deque[TokenizedDocument] = collections.deque()
    available = 0
    for document in documents:
        pending.append(document)
        available += len(document.tokens)
        while available >= seq_len:
            parts, need = [], seq_len
            while need:
                head = pending[0]
                take = min(need, len(head.tokens))
                parts.append(head.tokens[:take])
                need -= take
                if take == len(head.tokens):
                    pending.popleft()
                    end = head.end
                else:
                    end = dataclasses.replace(head.start, offset=head.start.offset + take)
                    pending[0] = dataclasses.replace(head, tokens=head.tokens[take:], start=end)
            available -= seq_len
            yield PackedRow(
                input_ids=np.concatenate(parts),
                segment_ids=np.repeat(np.arange(1, len(parts) + 1), [len(p) for p in parts]),
                position_ids=np.concatenate([np.arange(len(p)) for p in parts]),
                end=end,
            )
