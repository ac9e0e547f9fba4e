"""Nothing of ours competes with a timed sample: card renders are waited for, work is serialized."""

import os
import signal
import subprocess
import sys
import time

from torchperf.quiet import (
    card_renders_running,
    continue_processes,
    cores_lock,
    lock_holders,
    lock_waiters,
    stop_tree,
)

SLEEP = "import time, sys; time.sleep(float(sys.argv[1]))"


def test_sees_a_running_card_render_until_it_exits():
    # GIVEN a child whose command line looks like Metaflow's `flow.py card create`
    child = subprocess.Popen([sys.executable, "-c", SLEEP, "0.3", "card", "create"])
    assert card_renders_running()
    child.wait()
    assert not card_renders_running()


def test_ignores_other_children():
    # GIVEN a long-lived child that is not a card render (a sidecar, say)
    child = subprocess.Popen([sys.executable, "-c", SLEEP, "5"])
    try:
        assert not card_renders_running()
    finally:
        child.kill()
        child.wait()


HOLD = """
import sys, time
from torchperf.quiet import cores_lock
with cores_lock(sys.argv[1]):
    print(time.time(), flush=True)
    time.sleep(0.5)
"""


def test_cores_lock_excludes_other_processes(tmp_path):
    lock = str(tmp_path / "cores.lock")
    with cores_lock(lock):
        # WHEN another process asks for the lock while we hold it
        other = subprocess.Popen([sys.executable, "-c", HOLD, lock], stdout=subprocess.PIPE)
        time.sleep(0.5)
        released = time.time()
    got = float(other.communicate()[0])
    # THEN it gets it only after we let go
    assert got >= released


def test_no_lock_path_means_no_lock():
    with cores_lock(None):
        pass


def _state(pid):
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


# A parent that starts a busy child, then is busy itself.
TREE = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
print(child.pid, flush=True)
while True:
    pass
"""


def test_stop_tree_stops_a_process_and_its_children_until_continued():
    parent = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE)
    child = int(parent.stdout.readline())
    try:
        stopped = stop_tree(parent.pid)
        assert sorted(stopped) == sorted([parent.pid, child])
        assert {_state(pid) for pid in stopped} == {"T"}
        # WHEN continued, both run again (busy loops read R once scheduled)
        continue_processes(stopped)
        deadline = time.monotonic() + 5
        while {_state(pid) for pid in stopped} != {"R"} and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "T" not in {_state(pid) for pid in stopped}
    finally:
        for pid in (child, parent.pid):
            os.kill(pid, signal.SIGKILL)
        parent.communicate()


def test_continue_skips_processes_that_are_gone():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    continue_processes([gone.pid])


def test_lock_waiters_are_told_from_holders(tmp_path):
    lock = str(tmp_path / "cores.lock")
    with cores_lock(lock):
        other = subprocess.Popen([sys.executable, "-c", HOLD, lock], stdout=subprocess.PIPE)
        deadline = time.monotonic() + 5
        while other.pid not in (lock_waiters(lock) or set()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert lock_waiters(lock) == {other.pid}
        assert lock_holders(lock) == {os.getpid()}
    other.communicate()
    assert lock_waiters(lock) == set()
