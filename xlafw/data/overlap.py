"""Whether two data sources can share a document, decided from their configs alone.

Validation uses this to refuse an evaluation pipeline that may read training
data. The answer is structural ("by construction"), not a scan of the data:

- ``TextFiles`` over common files are disjoint only as complementary parts of
  the held-out split (``train`` and ``heldout``, the same ``sample_by``, and the
  held-out part no larger than the share the training part leaves out).
- Any other two sources over common local files (``TextFiles``, ``LocalFiles``)
  can overlap; over no common file they cannot.
- Two ``HubDataset`` of the same name overlap when they stream the same split,
  whatever their configs (FineWeb-Edu's ``sample-10BT`` is drawn from its other
  configs); different splits of one dataset are disjoint by the dataset's own
  definition. Different datasets are taken as disjoint: a derived dataset
  (FineWeb-Edu is filtered from FineWeb) is beyond what names can tell.
- A ``Mixture`` overlaps another source when any of its sources does;
  ``ConsecutivePairs`` is its text source.
"""

from __future__ import annotations

import os

from xlafw.data import files
from xlafw.data.mixture import Mixture
from xlafw.data.pairs import ConsecutivePairs
from xlafw.data.sources import HubDataset, LocalFiles, TextFiles

_FIX = (
    "Fix: read the training documents with split='train' and the evaluation "
    "documents with split='heldout' (TextFiles), or evaluate on other data."
)


def _leaves(source) -> list:
    if isinstance(source, Mixture):
        return [leaf for s in source.sources for leaf in _leaves(s)]
    if isinstance(source, ConsecutivePairs):
        return _leaves(source.source)
    return [source]


def _files(source: TextFiles | LocalFiles) -> set[str]:
    """Resolved real paths; an unresolvable pattern stands for itself."""
    found = set()
    directories: dict[str, str] = {}  # a glob's files share a directory: resolve it once
    for pattern in source.paths:
        try:
            matches = files.resolve(pattern)
        except files.MissingFileError:
            found.add(pattern)
            continue
        for path in matches:
            if os.path.islink(path):
                found.add(os.path.realpath(path))
                continue
            head, tail = os.path.split(path)
            if head not in directories:
                directories[head] = os.path.realpath(head)
            found.add(os.path.join(directories[head], tail))
    return found


def _text_split_overlap(a: TextFiles, b: TextFiles) -> str | None:
    """Why two TextFiles over common files can share a document, or None."""
    if {a.split, b.split} != {"train", "heldout"}:
        return f"both read the same files with split={a.split!r} and split={b.split!r}"
    if a.sample_by != b.sample_by:
        return (
            f"they cut documents differently (sample_by={a.sample_by!r} and "
            f"{b.sample_by!r}), so the held-out hash does not separate them"
        )
    train, heldout = (a, b) if a.split == "train" else (b, a)
    if heldout.heldout_share > train.heldout_share:
        return (
            f"the held-out part keeps heldout_share={heldout.heldout_share:g} but training "
            f"leaves out only {train.heldout_share:g}"
        )
    return None


def _leaf_overlap(a, b) -> str | None:
    if isinstance(a, HubDataset) and isinstance(b, HubDataset):
        if a.name == b.name and a.split == b.split:
            return (
                f"both stream split {a.split!r} of {a.name} "
                f"(configs of one dataset share documents)"
            )
        return None
    file_sources = (TextFiles, LocalFiles)
    if isinstance(a, file_sources) and isinstance(b, file_sources):
        common = _files(a) & _files(b)
        if not common:
            return None
        if isinstance(a, TextFiles) and isinstance(b, TextFiles):
            reason = _text_split_overlap(a, b)
        else:
            reason = "both read them whole"
        if reason is None:
            return None
        return f"{len(common)} file(s) are read by both ({min(common)}...): {reason}"
    if type(a) is type(b) and a == b:
        return "they are the same source"
    return None


def sources_overlap(a, b) -> str | None:
    """Why sources ``a`` and ``b`` can share a document, or None if they cannot.

    Args:
      a: a source (``TextFiles``, ``LocalFiles``, ``HubDataset``, ``Mixture``,
        ``ConsecutivePairs``...), typically the training pipeline's.
      b: another, typically the evaluation pipeline's.

    Returns:
      None when the two are disjoint by construction; otherwise the reason,
      ending with how to fix it. Sources of unknown types are disjoint unless
      equal.

    Example:
      >>> train = TextFiles(paths=(SHAKESPEARE_TEXTS,), split="train")
      >>> sources_overlap(train, dataclasses.replace(train, split="heldout")) is None
      True
    """
    for leaf_a in _leaves(a):
        for leaf_b in _leaves(b):
            reason = _leaf_overlap(leaf_a, leaf_b)
            if reason is not None:
                return f"{reason}. {_FIX}"
    return None
