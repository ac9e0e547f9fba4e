"""Closing the terminal a sweep runs in (SIGHUP, and nowhere left to print) ends it the way
Ctrl-C does. On Argo: tests/test_argo_backend.py."""

import errno
import json
import os
import pty
import time

import pytest
from terminal import Terminal

from tests.test_e2e import sweep_command, sweep_processes
from torchperf.signals import leave_a_closed_terminal


def test_output_to_a_closed_terminal_goes_nowhere_and_other_output_is_left_alone():
    # GIVEN a terminal whose window was closed, an open one, and a pipe
    closed_master, closed = pty.openpty()
    open_master, still_open = pty.openpty()
    reader, pipe = os.pipe()
    os.close(closed_master)
    with pytest.raises(OSError) as error:
        os.write(closed, b"lost")
    assert error.value.errno == errno.EIO
    try:
        # WHEN the sweep leaves the closed one
        leave_a_closed_terminal((closed, still_open, pipe))
        # THEN writing there no longer fails, and the others still reach their readers
        assert os.write(closed, b"gone") == 4
        os.write(still_open, b"seen")
        assert os.read(open_master, 100).endswith(b"seen")
        os.write(pipe, b"piped")
        assert os.read(reader, 100) == b"piped"
    finally:
        for fd in (closed, open_master, still_open, reader, pipe):
            os.close(fd)


@pytest.mark.e2e
@pytest.mark.flow
def test_closing_the_terminal_ends_a_local_sweep_like_ctrl_c(tmp_path):
    # GIVEN a local sweep started from a terminal, both of its variants under way
    sweep_dir = tmp_path / "hungup"
    grid = ["cpu=1", "tensor_dim=32,48", "measure_seconds=3", "live_analytics=false"]
    terminal = Terminal(sweep_command(sweep_dir, *grid), dict(os.environ))
    try:
        turns = sweep_dir / ".turns"
        deadline = time.monotonic() + 120
        while len(list(turns.glob("*.ready"))) < 2 and terminal.process.poll() is None:
            assert time.monotonic() < deadline, terminal.text()
            time.sleep(0.05)
        assert terminal.process.poll() is None, terminal.text()
        # WHEN the user closes the terminal
        terminal.close()
        returncode = terminal.process.wait(60)
        # THEN the sweep ended as after Ctrl-C, its runs with it
        deadline = time.monotonic() + 30
        while sweep_processes(sweep_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = sweep_processes(sweep_dir)
    finally:
        terminal.kill()
    assert returncode == 130
    assert not left
    statuses = [
        v["status"] for v in json.loads((sweep_dir / "summary.json").read_text())["variants"]
    ]
    assert len(statuses) == 2 and "cancelled" in statuses, statuses
    assert set(statuses) <= {"succeeded", "cancelled"}, statuses
