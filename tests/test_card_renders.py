"""A timed sample waits for the card renders its step started, and for nothing else."""

import subprocess
import sys

from torchperf.card_renders import card_renders_running

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
