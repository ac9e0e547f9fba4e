"""The signals that end a sweep the way Ctrl-C does: SIGTERM (kill, a job scheduler) and SIGHUP
(the terminal was closed). Running variants stop, teardown runs, the summary stays true.
"""

from __future__ import annotations

import errno
import os
import signal
import termios
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def end_like_ctrl_c() -> None:
    """From now on SIGTERM and SIGHUP raise KeyboardInterrupt in the main thread."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _hung_up)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _hung_up(signum, frame):
    leave_a_closed_terminal()
    raise KeyboardInterrupt


def leave_a_closed_terminal(fds: tuple[int, ...] = (1, 2)) -> None:
    """Point the output that went to a terminal now closed at /dev/null: every write to a
    hung-up terminal fails (EIO), and teardown's lines must not stop teardown. Output that goes
    to a file, a pipe or a terminal still open is left as it is."""
    for fd in fds:
        try:
            termios.tcgetattr(fd)
        except termios.error as error:
            if error.args[0] != errno.EIO:
                continue  # not a terminal: a file or a pipe
        else:
            continue  # a terminal still open (SIGHUP sent by hand)
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, fd)
        finally:
            os.close(null)


def interruptible(work: Callable[[], T]) -> T:
    """``work()``, run in a daemon thread while this one waits for it: a signal is answered here
    at once, even while ``work`` sits in a library call that swallows KeyboardInterrupt
    (Metaflow's metadata client retries any exception, through a bare ``except:``, on a service
    that never answers). Abandoned so, ``work`` goes on until the process ends."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as error:  # noqa: BLE001 - raised again in the waiting thread
            outcome["error"] = error

    thread = threading.Thread(target=run, name="interruptible", daemon=True)
    thread.start()
    thread.join()  # a signal interrupts the wait: KeyboardInterrupt from here
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
