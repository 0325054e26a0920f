"""SftPipeline: supervised fine-tuning batches, one example per fixed-length row.

Records (prompt/completion or chat messages) are rendered into spans by a
format, tokenized with loss only on the completion or assistant turns, EOS
appended, truncated or dropped when too long, and padded on the right to
exactly ``seq_len`` (``xlafw.data.collators``). Every batch has the same shape
whatever the examples' lengths, so the train step compiles once.

Resume works like ``DataPipeline``'s: the position after each batch is
``StreamPosition(epoch, document=next record, offset=0)``; restoring skips
records without tokenizing them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch

from xlafw import progress
from xlafw.arguments import InvalidArgument, instance, raise_invalid
from xlafw.data.collators import (
    ChatMessages,
    PromptCompletion,
    SftEncoder,
    SftExample,
    Truncation,
    sft_batch,
)
from xlafw.data.pipeline import BatchPipeline, HostShard
from xlafw.data.streams import RecordSource, StreamPosition
from xlafw.data.tokenizers import Tokenizer


class SftPipeline(BatchPipeline):
    """Padded SFT batches for one host.

    Yields ``input_ids``, ``labels`` (-100 on prompt and pad positions) and
    ``attention_mask`` (0 on pads); each ``[global_batch_size // process_count,
    seq_len]`` int64.

    Args:
      source: where records come from (``LocalFiles``, ``HubDataset``).
      tokenizer: turns text into ids; its ``pad_id`` fills the padding.
      seq_len: tokens per row; every row is padded to it.
      global_batch_size: rows per step over all hosts.
      format: how a record becomes prompt and loss spans.
      truncation: what happens to an example longer than ``seq_len``.
      add_bos: start every example with the tokenizer's BOS, if it has one.
      host: this process's share; the trainer fills it from the runtime.
    """

    def __init__(
        self,
        source: RecordSource,
        tokenizer: Tokenizer,
        seq_len: int,
        global_batch_size: int,
        format: PromptCompletion | ChatMessages = PromptCompletion(),
        truncation: Truncation = Truncation.RIGHT,
        add_bos: bool = True,
        host: HostShard = HostShard(),
    ):
        super().__init__(source, tokenizer, seq_len, global_batch_size, host)
        raise_invalid(
            instance("format", format, (PromptCompletion, ChatMessages)),
            instance("truncation", truncation, Truncation),
            instance("add_bos", add_bos, bool),
            None
            if hasattr(source, "records")
            else InvalidArgument(
                "source", source, "must be a record source (LocalFiles, HubDataset, ...)."
            ),
        )
        self.format = format
        self.encoder = SftEncoder(tokenizer, seq_len, truncation, add_bos)

    def examples(
        self, start: StreamPosition = StreamPosition()
    ) -> Iterator[tuple[SftExample, StreamPosition]]:
        """Yields kept examples from ``start`` and the position after each, forever.

        Raises:
          ValueError: when a whole epoch keeps no example.
        """
        for epoch in itertools.count(start.epoch):
            skip = start.document if epoch == start.epoch else 0
            records = self.source.records(self.host.process_index, self.host.process_count)
            kept = 0
            records = progress.skip(
                records,
                skip,
                f"data: skipping to record {skip:,} of epoch {epoch} (resume)",
                "records",
            )
            for index, record in enumerate(records, skip):
                example = self.encoder.encode(self.format.spans(record))
                if example is not None:
                    kept += 1
                    yield example, StreamPosition(epoch, index + 1, 0)
            if not kept and not skip:
                raise ValueError(
                    f"no SFT example of host {self.host.process_index} survives "
                    f"seq_len={self.seq_len} with {self.encoder.truncation}. Fix: raise "
                    "seq_len, use Truncation.RIGHT, or check the format's field names."
                )

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        examples = self.examples(self._start)
        for batch in itertools.count(self._start_batch + 1):
            block = [next(examples) for _ in range(self.host_batch_size)]
            self._record(batch, block[-1][1])
            yield sft_batch([e for e, _ in block], self.seq_len, self.tokenizer.pad_id)
