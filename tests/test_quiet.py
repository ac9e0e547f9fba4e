"""Nothing of ours competes with a timed sample: card renders are waited for, work is serialized."""

import subprocess
import sys
import time

from torchperf.quiet import card_renders_running, cores_lock

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
