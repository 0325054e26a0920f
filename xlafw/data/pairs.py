"""Prompt/completion records made from consecutive documents of a text source.

In Shakespeare's plays a paragraph is a speech, so each speech prompts the
reply that follows it: a real, offline SFT dataset whose examples vary in
length, which is what the SFT path must handle without recompiling.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from xlafw.data.sources import TextFiles


@dataclasses.dataclass(frozen=True)
class ConsecutivePairs:
    """``{"prompt": document i, "completion": document i + 1}`` records.

    Attributes:
      source: the documents, in order (leave its shuffle buffer at 0 and its
        split at ``all``, or the pairs are unrelated).
    """

    source: TextFiles

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
