"""Keeping other work off the cores while a benchmark measures.

Metaflow renders each live-card refresh in a child process (``flow.py card create``); left
running, it would compete with the timed loop for the same cores. ``card_renders_running``
tells the loop when it is done. ``cores_lock`` serializes CPU-heavy work of several
processes on one machine; ``stop_tree`` and ``continue_processes`` hold back work that may
wait until a measurement is over. All of it reads Linux's /proc.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from collections.abc import Iterable, Iterator


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


def command_has(pid: int, marker: bytes) -> bool:
    """Whether the NUL-separated command line of ``pid`` contains ``marker``."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return marker in cmdline.read()
    except OSError:
        return False


def running_children(marker: bytes, pid: int | str = "self") -> list[int]:
    """The children of ``pid`` still running whose command line contains ``marker``."""
    return [
        child
        for child in children(pid)
        if _state(child) not in (None, "Z", "X") and command_has(child, marker)
    ]


# Metaflow's card renderer runs as `python flow.py ... card create ...`; other children, such as
# a metadata heartbeat sidecar, live as long as the task and must not be waited for.
CARD_RENDER = b"\0card\0create\0"


def card_renders_running() -> bool:
    """Whether a card render started by this process still runs."""
    return os.path.isdir("/proc/self/task") and bool(running_children(CARD_RENDER))


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


def _flocks(path: str | os.PathLike, waiting: bool) -> set[int] | None:
    try:
        inode = str(os.stat(path).st_ino)
        with open("/proc/locks") as locks:
            lines = locks.read().splitlines()
    except OSError:
        return None
    pids = set()
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 4321 fd:01:1234 0 EOF"; waiters read "1: -> FLOCK ...".
        fields = line.split()
        if waiting:
            if fields[1:2] != ["->"]:
                continue
            fields = fields[1:]
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == inode:
            pids.add(int(fields[4]))
    return pids


def lock_holders(path: str | os.PathLike) -> set[int] | None:
    """The processes holding a flock on ``path`` (Linux's /proc/locks); None where unknown."""
    return _flocks(path, waiting=False)


def lock_waiters(path: str | os.PathLike) -> set[int] | None:
    """The processes blocked waiting for a flock on ``path``; None where unknown."""
    return _flocks(path, waiting=True)


def stop_tree(root: int, wait_seconds: float = 1.0) -> list[int]:
    """Stop (SIGSTOP) ``root`` and its descendants; return the processes stopped.

    A parent is stopped before its children are listed, so that none is forked unseen.
    """
    stopped: list[int] = []
    pending = [root]
    while pending:
        pid = pending.pop()
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            continue
        stopped.append(pid)
        deadline = time.monotonic() + wait_seconds
        while _state(pid) not in (None, "T", "t", "Z", "X") and time.monotonic() < deadline:
            time.sleep(0.001)
        pending.extend(children(pid))
    return stopped


def continue_processes(pids: Iterable[int]) -> None:
    """Let processes stopped by ``stop_tree`` go on; those that are gone are skipped."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
