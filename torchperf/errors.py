"""Errors meant for the user: ConfigError for bad input, and one line out of a long message."""

from __future__ import annotations

import sys

# A line longer than this is cut: it goes into a terminal line, a summary field, a card cell.
LINE_LIMIT = 300


class ConfigError(ValueError):
    """A setting that cannot work; its message is one line meant for the user."""


def one_line(error: BaseException | str | None, *, first: bool = False) -> str:
    """The line of ``error`` that says what went wrong: the last non-empty one (where tracebacks
    and Metaflow's stderr end), or the first with ``first`` (parsers put the reason there)."""
    text = str(error or "")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__ if isinstance(error, BaseException) else "no output"
    return (lines[0] if first else lines[-1])[:LINE_LIMIT]


def fail(error: ConfigError | str) -> None:
    """Bad input: one line on stderr and exit status 2, before anything runs."""
    print(f"error: {one_line(error, first=True)}", file=sys.stderr)
    # SystemExit passes through Hydra's error reporting untouched.
    sys.exit(2)
