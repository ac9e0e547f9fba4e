"""A command run in a terminal of its own (a pseudo-terminal), which a test can close as a user
closes a terminal window: the kernel sends SIGHUP to the command's session, and every write to
the terminal fails from then on.

    terminal = Terminal([sys.executable, "sweep_deployer.py", "-m"], env)
    ...
    terminal.close()
    terminal.process.wait(60)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import signal
import subprocess
import termios
import threading


def _take_terminal() -> None:
    # In the child, after setsid: its stdin (the terminal) becomes its controlling terminal.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    def __init__(self, command: list[str], env: dict, cwd: str | None = None):
        master, slave = pty.openpty()
        self.process = subprocess.Popen(
            command, env=env, cwd=cwd, stdin=slave, stdout=slave, stderr=slave,
            start_new_session=True, preexec_fn=_take_terminal,
        )  # fmt: skip
        os.close(slave)
        self._master: int | None = master
        self._output = bytearray()
        self._closing = threading.Event()
        # Read all along: a terminal whose buffer is full blocks the command's writes.
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closing.is_set():
            ready, _, _ = select.select([self._master], [], [], 0.1)
            if not ready:
                continue
            try:
                data = os.read(self._master, 65536)
            except OSError:  # the command's side is gone
                return
            if not data:
                return
            self._output += data

    def text(self) -> str:
        """What the command has shown so far."""
        return self._output.decode(errors="replace")

    def close(self) -> None:
        """Close the window: the command's session gets SIGHUP."""
        self._closing.set()
        self._reader.join()
        if self._master is not None:
            os.close(self._master)
            self._master = None

    def kill(self) -> None:
        """Stop every process of the command's session, whatever state it is in."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.close()
        self.process.wait(10)
