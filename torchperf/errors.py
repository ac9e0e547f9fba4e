"""Errors meant for the user: ConfigError for bad input, and one line out of a long message."""

from __future__ import annotations

import re
import sys

# A line longer than this is cut: it goes into a terminal line, a summary field, a card cell.
LINE_LIMIT = 300
# Metaflow's prefix of a task's output lines: "2026-12-06 08:20:50.368 [17.../start/1 (pid 5)] ".
TASK_PREFIX = re.compile(r"^\S+ \S+ \[[^\]]*\] ")
# An exception's last line, as a traceback ends: "ValueError: cpu=3 exceeds ...".
EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt|Exit): \S")


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


def failure_reason(output: str) -> str:
    """Why a run failed, from its output: the last exception line a task printed (Metaflow's
    own last lines only say which step failed), else the last line."""
    lines = [TASK_PREFIX.sub("", line).strip() for line in output.splitlines()]
    for line in reversed(lines):
        if EXCEPTION_LINE.match(line):
            return line[:LINE_LIMIT]
    return one_line(output)


def fail(error: ConfigError | str) -> None:
    """Bad input: one line on stderr and exit status 2, before anything runs."""
    print(f"error: {one_line(error, first=True)}", file=sys.stderr)
    # SystemExit passes through Hydra's error reporting untouched.
    sys.exit(2)
