"""A deterministic held-out split of a text source, by a stable hash of each document.

A document (a paragraph, line or file, as the source's ``sample_by`` cuts it) is
held out when the 64-bit BLAKE2b hash of its UTF-8 text, read as a fraction of
2**64, is below ``heldout_share``; the rest is ``train``. So:

- the split depends on the text alone: not on file order, shuffling, host count
  or which pipeline reads it, so a train and an eval pipeline over the same
  files agree on every document without sharing any state;
- identical documents land on the same side, so no text appears in both
  (Shakespeare's 530 ``[Exeunt.]`` paragraphs all fall on one side);
- it works for any number of files (a single-file corpus too) and keeps the
  held-out part a uniform sample of the whole, every work included.

Why not hold out whole works: 42 files give a lumpy share (one play is ~2.5%
of the tokens) and a single-file corpus could not be split at all.
"""

from __future__ import annotations

import hashlib
from typing import Literal

Split = Literal["all", "train", "heldout"]
SPLITS: tuple[str, ...] = ("all", "train", "heldout")

DEFAULT_HELDOUT_SHARE = 0.03
"""Documents held out: 3% of the Shakespeare paragraphs, 3.4% of their tokens."""


def heldout_fraction(text: str) -> float:
    """Where ``text`` falls in [0, 1): its BLAKE2b-64 hash divided by 2**64."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def in_split(text: str, split: Split, heldout_share: float) -> bool:
    """Whether a document belongs to ``split`` (``all`` holds every document).

    Args:
      text: the document, exactly as the source yields it.
      split: ``all``, ``train`` (not held out) or ``heldout``.
      heldout_share: the fraction of documents (by hash) held out.

    Returns:
      True when the document is in ``split``.
    """
    if split == "all":
        return True
    return (heldout_fraction(text) < heldout_share) == (split == "heldout")


def split_problems(split: str, heldout_share: float, path: str) -> list[str]:
    """What is wrong with a split setting, one "path: problem. Fix: ..." per problem."""
    problems = []
    if split not in SPLITS:
        problems.append(
            f"{path}.split={split!r} is not a split. Fix: use one of {', '.join(SPLITS)}."
        )
    if not (
        isinstance(heldout_share, (int, float))
        and not isinstance(heldout_share, bool)
        and 0 < heldout_share < 1
    ):
        problems.append(
            f"{path}.heldout_share={heldout_share} must be between 0 and 1 (exclusive). "
            f"Fix: use a small fraction such as {DEFAULT_HELDOUT_SHARE}."
        )
    return problems
