"""Progress of long preparation work, as log lines with a bar, rate and ETA.

Start-up work that is usually quick but can be long (filling a shuffle
buffer, skipping to a resume position in a large corpus, importing Hugging
Face weights) reports through ``Progress``. It stays silent when the work ends
within ``delay`` seconds, then logs a line every ``interval`` seconds and one
when done:

    data: shuffle buffer [########------------]  41% 4,100/10,000 documents, 2,050/s, eta 3 s

Log lines, not a terminal bar: they read the same in a terminal, a log file and
a pod's aggregated logs, and they never interleave with other log lines.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
BAR_WIDTH = 20


class Progress:
    """Counts work done towards ``total`` and logs it when the work is slow.

    Args:
      description: what is being done, e.g. ``data: filling the shuffle buffer``.
      total: units of work in all; None when unknown (no bar, no ETA).
      unit: what one unit is, plural (``documents``, ``MiB``).
      delay: seconds of silence before the first line.
      interval: seconds between lines.
      logger: where lines go.
    """

    def __init__(
        self,
        description: str,
        total: float | None = None,
        unit: str = "items",
        delay: float = 2.0,
        interval: float = 5.0,
        logger: logging.Logger = log,
    ):
        self.description = description
        self.total = total
        self.unit = unit
        self.interval = interval
        self.logger = logger
        self.done = 0.0
        self.lines = 0
        self._start = time.monotonic()
        self._next = self._start + delay

    def update(self, amount: float = 1) -> None:
        """Adds ``amount`` units; logs a line when one is due."""
        self.done += amount
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.interval
            self._log(now)

    def close(self) -> None:
        """Logs the final line, if any line was logged before."""
        if self.lines:
            self._log(time.monotonic(), final=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def line(self, now: float, final: bool = False) -> str:
        """The progress line at time ``now`` (``time.monotonic``)."""
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        parts = [self.description]
        if self.total:
            fraction = min(self.done / self.total, 1.0)
            filled = round(fraction * BAR_WIDTH)
            parts.append(f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {fraction:4.0%}")
            parts.append(f"{self.done:,.0f}/{self.total:,.0f} {self.unit},")
        else:
            parts.append(f"{self.done:,.0f} {self.unit},")
        parts.append(f"{rate:,.0f}/s,")
        if final:
            parts.append(f"done in {elapsed:.1f} s")
        elif self.total and rate > 0:
            parts.append(f"eta {max(self.total - self.done, 0) / rate:.0f} s")
        else:
            parts.append(f"{elapsed:.0f} s so far")
        return " ".join(parts)

    def _log(self, now: float, final: bool = False) -> None:
        self.lines += 1
        self.logger.info(self.line(now, final))


def skip(items: Iterable[T], count: int, description: str, unit: str = "items") -> Iterator[T]:
    """Consumes the first ``count`` of ``items`` (with progress); returns the rest."""
    rest = iter(items)
    with Progress(description, count, unit) as progress:
        for _ in itertools.islice(rest, count):
            progress.update()
    return rest
