"""Collectives of a compiled XLA module, counted from its HLO text (no torch_xla).

The collectives SPMD inserts exist only after partitioning, so they are read
from the optimized module XLA dumps when ``XLA_FLAGS`` holds
``dump_flags(DIR)`` before the runtime starts. On XLA's CPU backend the
partitioned, optimized module of each compilation is
``DIR/module_NNNN.<name>.cpu_after_optimizations.txt`` (``before_optimizations``
is the unpartitioned graph torch_xla built, without collectives).

Counts are per execution of the module: a collective inside a while loop
counts once per iteration when XLA knows the trip count
(``known_trip_count``), else once. Bytes are the size of each collective's
result on one device (for an all-gather the gathered tensor, for a
reduce-scatter the scattered piece): what lands on a device, not what crosses
the wire.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from pathlib import Path

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

# Bits per element of HLO's primitive types (sub-byte types rounded up to a byte).
_ELEMENT_BITS = {
    "pred": 8,
    "s4": 8,
    "u4": 8,
    "s8": 8,
    "u8": 8,
    "f8e4m3fn": 8,
    "f8e5m2": 8,
    "f8e4m3fnuz": 8,
    "f8e5m2fnuz": 8,
    "s16": 16,
    "u16": 16,
    "f16": 16,
    "bf16": 16,
    "s32": 32,
    "u32": 32,
    "f32": 32,
    "s64": 64,
    "u64": 64,
    "f64": 64,
    "c64": 64,
    "c128": 128,
}

_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")
# "  [ROOT ]%name = SHAPE op(operands), attributes"; SHAPE may be a tuple with spaces.
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.+?)\s+([a-z][a-z0-9\-]*)\(")
_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_CALLEES = re.compile(r"\b(body|condition|to_apply|calls)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")


@dataclasses.dataclass(frozen=True)
class Collectives:
    """Collective ops of one module execution, by kind.

    Attributes:
      counts: ops per kind (every kind of ``KINDS`` present, zero included).
      bytes: result bytes per device, per kind.
    """

    counts: dict[str, int]
    bytes: dict[str, int]

    @property
    def total(self) -> int:
        """Collective ops of every kind."""
        return sum(self.counts.values())

    @property
    def total_bytes(self) -> int:
        """Result bytes per device of every kind."""
        return sum(self.bytes.values())

    def summary(self) -> str:
        """One line: ``total N (all-reduce a, all-gather b, ...), X MiB``."""
        kinds = ", ".join(f"{k} {n}" for k, n in self.counts.items() if n)
        return f"total {self.total} ({kinds or 'none'}), {self.total_bytes / 2**20:,.2f} MiB"


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape string: an array (``f32[4,32]{1,0}``) or a tuple of them."""
    total = 0
    for element, dims in _ARRAY.findall(shape):
        bits = _ELEMENT_BITS.get(element)
        if bits is None:
            continue  # token[] and other non-array shapes
        numel = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
        total += numel * bits // 8
    return total


def _kind(opcode: str) -> tuple[str | None, bool]:
    """The collective kind of an opcode and whether it is an async ``-start`` half."""
    for kind in KINDS:
        if opcode == kind or opcode == f"{kind}-done":
            return kind, False
        if opcode == f"{kind}-start":
            return kind, True
    return None, False


def collectives(hlo_text: str) -> Collectives:
    """Counts the collectives of one module's HLO text, per execution of its entry.

    An async pair (``all-gather-start``/``-done``) counts once, with the
    ``-done`` result's bytes. Computations called from a while loop count
    ``known_trip_count`` times; a conditional's branches each count once (an
    upper bound).
    """
    found: dict[str, list[tuple[str, int]]] = {}
    calls: dict[str, list[tuple[str, int]]] = {}
    entry, current = None, None
    for line in hlo_text.splitlines():
        head = _COMPUTATION.match(line)
        if head:
            current = head.group(2)
            if head.group(1):
                entry = current
            found.setdefault(current, [])
            calls.setdefault(current, [])
            continue
        if current is None:
            continue
        instruction = _INSTRUCTION.match(line)
        if not instruction:
            continue
        shape, opcode = instruction.groups()
        kind, is_start = _kind(opcode)
        if kind is not None and not is_start:
            found[current].append((kind, shape_bytes(shape)))
        trips = 1
        if opcode == "while":
            match = _TRIP_COUNT.search(line)
            trips = int(match.group(1)) if match else 1
        for _, callee in _CALLEES.findall(line):
            calls[current].append((callee, trips))
        for branches in _BRANCHES.findall(line):
            for callee in branches.split(","):
                calls[current].append((callee.strip().lstrip("%"), 1))
    counts, nbytes = Counter(), Counter()
    if entry is None:
        return Collectives({k: 0 for k in KINDS}, {k: 0 for k in KINDS})

    def visit(name: str, times: int, depth: int = 0) -> None:
        if depth > 64:  # HLO has no recursion; guards against a malformed text
            return
        for kind, size in found.get(name, ()):
            counts[kind] += times
            nbytes[kind] += times * size
        for callee, trips in calls.get(name, ()):
            visit(callee, times * trips, depth + 1)

    visit(entry, 1)
    return Collectives({k: counts[k] for k in KINDS}, {k: nbytes[k] for k in KINDS})


def dump_flags(directory: str | Path) -> str:
    """``XLA_FLAGS`` that make XLA write every compiled module's HLO text into ``directory``."""
    return f"--xla_dump_to={directory} --xla_dump_hlo_as_text"


def optimized_modules(directory: str | Path) -> list[Path]:
    """The partitioned, optimized module texts XLA dumped into ``directory``, in compile order."""
    return sorted(Path(directory).glob("module_*after_optimizations.txt"))


def largest_module(directory: str | Path, exclude: set[Path] = frozenset()) -> Path:
    """The optimized module with the longest text, ``exclude`` aside (a training step's)."""
    paths = [p for p in optimized_modules(directory) if p not in exclude]
    if not paths:
        raise FileNotFoundError(f"no *after_optimizations.txt module in {directory}")
    return max(paths, key=lambda p: p.stat().st_size)
