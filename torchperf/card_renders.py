"""The card renders a measuring step starts, so that its timed loop can wait for them.

Metaflow renders each live-card refresh in a child process (``flow.py card create``); left
running, it would compete with the timed loop for the same cores. ``card_renders_running`` tells
the loop when it is done. It reads Linux's /proc (elsewhere it sees no renders); the local
backend stops a run's processes with the same two readers, ``children`` and ``alive``.
"""

from __future__ import annotations

import os


def children(pid: int | str = "self") -> list[int]:
    """The child processes of ``pid`` (of every thread of it)."""
    pids = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for thread in threads:
        try:
            with open(f"/proc/{pid}/task/{thread}/children") as listed:
                pids.extend(int(child) for child in listed.read().split())
        except OSError:
            continue
    return pids


def _state(pid: int) -> str | None:
    """R, S, T (stopped), Z (exited) ...; None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # The state follows the parenthesized command name.
            return stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs: a zombie has ended, though its parent has not collected it."""
    return _state(pid) not in (None, "Z", "X")


def command_has(pid: int, marker: bytes) -> bool:
    """Whether the NUL-separated command line of ``pid`` contains ``marker``."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return marker in cmdline.read()
    except OSError:
        return False


def running_children(marker: bytes, pid: int | str = "self") -> list[int]:
    """The children of ``pid`` still running whose command line contains ``marker``."""
    return [child for child in children(pid) if alive(child) and command_has(child, marker)]


# Metaflow's card renderer runs as `python flow.py ... card create ...`; other children, such as
# a metadata heartbeat sidecar, live as long as the task and must not be waited for.
CARD_RENDER = b"\0card\0create\0"


def card_renders_running() -> bool:
    """Whether a card render started by this process still runs."""
    return os.path.isdir("/proc/self/task") and bool(running_children(CARD_RENDER))
