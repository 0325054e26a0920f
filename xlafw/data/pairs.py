"""Prompt/completion records made from consecutive documents of a text source.

In Shakespeare's plays a paragraph is a speech, so each speech prompts the
reply that follows it: a real, offline SFT dataset whose examples vary in
length, which is what the SFT path must handle without recompiling.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from xlafw.arguments import InvalidArgument, instance, raise_invalid
from xlafw.data.sources import TextFiles


@dataclasses.dataclass(frozen=True)
class ConsecutivePairs:
    """``{"prompt": document i, "completion": document i + 1}`` records.

    Attributes:
      source: the documents, in order (leave its shuffle buffer at 0 and its
        split at ``all``, or the pairs are unrelated).
    """

    source: TextFiles

    def __post_init__(self):
        raise_invalid(instance("source", self.source, TextFiles))
        if self.source.shuffle_buffer:
            raise InvalidArgument(
                "source.shuffle_buffer",
                self.source.shuffle_buffer,
                "shuffled documents are not consecutive, so a prompt would not precede its "
                "reply. Fix: 0 (shuffle the pairs downstream, if at all).",
            )
        if self.source.split != "all":
            raise InvalidArgument(
                "source.split",
                self.source.split,
                "a split drops documents between a prompt and its reply. Fix: 'all'.",
            )

    def describe(self) -> str:
        """One line for ``--dry_run``."""
        return f"prompt/completion pairs of consecutive documents of {self.source.describe()}"

    def records(self, process_index: int, process_count: int) -> Iterator[dict[str, str]]:
        """Yields this host's pairs once; hosts pair within their own documents."""
        previous = None
        for document in self.source.documents(process_index, process_count):
            if previous is not None:
                yield {"prompt": previous, "completion": document}
            previous = document
