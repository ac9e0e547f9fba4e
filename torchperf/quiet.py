"""Keeping other work off the cores while a benchmark measures.

Metaflow renders each live-card refresh in a child process (``flow.py card create``); left
running, it would compete with the timed loop for the same cores. ``card_renders_running``
tells the loop when it is done. ``cores_lock`` serializes CPU-heavy work of several
processes on one machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator


def _running_children(marker: bytes) -> list[int]:
    pids = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as children:
                pids.extend(int(pid) for pid in children.read().split())
        except OSError:
            continue
    running = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                # The state follows the parenthesized command name; Z is an exited child.
                state = stat.read().rsplit(")", 1)[1].split()[0]
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if marker not in cmdline.read():
                    continue
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            running.append(pid)
    return running


# Metaflow's card renderer runs as `python flow.py ... card create ...`; other children, such as
# a metadata heartbeat sidecar, live as long as the task and must not be waited for.
CARD_RENDER = b"\0card\0create\0"


def card_renders_running() -> bool:
    """Whether a card render started by this process still runs."""
    return os.path.isdir("/proc/self/task") and bool(_running_children(CARD_RENDER))


@contextlib.contextmanager
def cores_lock(path: str | None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (no lock when None) for the duration of the block."""
    if not path:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def lock_holders(path: str | os.PathLike) -> set[int] | None:
    """The processes holding a flock on ``path`` (Linux's /proc/locks); None where unknown."""
    try:
        inode = str(os.stat(path).st_ino)
        with open("/proc/locks") as locks:
            lines = locks.read().splitlines()
    except OSError:
        return None
    holders = set()
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 4321 fd:01:1234 0 EOF"; waiters read "1: -> FLOCK ...".
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == inode:
            holders.add(int(fields[4]))
    return holders
