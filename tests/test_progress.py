"""Progress lines for long preparation work."""

from __future__ import annotations

import logging

from xlafw import progress
from xlafw.progress import Progress


def test_quick_work_logs_nothing(caplog):
    caplog.set_level(logging.INFO)
    with Progress("data: quick", total=10, unit="documents") as p:
        for _ in range(10):
            p.update()
    assert caplog.records == []


def test_slow_work_logs_a_bar_rate_eta_and_a_final_line(caplog):
    caplog.set_level(logging.INFO)
    with Progress("data: slow", total=200, unit="documents", delay=0, interval=0) as p:
        p.update(50)
        p.update(50)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert lines[0].startswith("data: slow [#####---------------]  25% 50/200 documents,")
    assert "eta" in lines[0]
    assert "[##########----------]  50% 100/200" in lines[1]
    assert "done in" in lines[2]


def test_unknown_total_has_no_bar():
    p = Progress("weights", unit="MiB")
    p.update(3)
    line = p.line(p._start + 2.0)
    assert line.startswith("weights 3 MiB, 2/s,") and "[" not in line


def test_skip_consumes_exactly_count_and_returns_the_rest():
    rest = progress.skip(iter(range(10)), 4, "data: skipping", "documents")
    assert list(rest) == [4, 5, 6, 7, 8, 9]
    rest = progress.skip(iter(range(3)), 5, "data: skipping", "documents")  # shorter stream
    assert list(rest) == []
