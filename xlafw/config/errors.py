"""The one error type for user mistakes in a config or on the command line."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(Exception):
    """One or more problems with the experiment config, each naming path and fix.

    ``xlafw.main`` prints the problems as a list and exits with status 2; no
    traceback is shown for a user error.
    """

    def __init__(self, problems: str | Iterable[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return f"config error: {self.problems[0]}"
        lines = [f"config error: {len(self.problems)} problems"]
        lines += [f"  {i}. {p}" for i, p in enumerate(self.problems, 1)]
        return "\n".join(lines)


def suggest(name: str, candidates: Iterable[str], prefix: str = "") -> str:
    """Returns " Did you mean X?" for the closest candidates, or ""."""
    matches = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.5)
    if not matches:
        return ""
    return " Did you mean " + " or ".join(f"{prefix}{m}" for m in matches) + "?"
