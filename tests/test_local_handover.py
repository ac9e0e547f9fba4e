"""When the local backend lets the next measurement have the cores: decided with a fake
analytics run and a real process waiting for the real lock."""

import os
import subprocess
import sys
import time

import pytest

from torchperf.backends.local import LocalBackend, _CoresHold
from torchperf.quiet import lock_holders, lock_waiters

WAIT_FOR_LOCK = """
import fcntl, sys
with open(sys.argv[1], "a") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
"""


class FakeAnalytics:
    def __init__(self, drawn):
        self.drawn = drawn
        self.paused = False

    def card_drawn(self):
        return self.drawn

    def pause(self):
        self.paused = True


def holding_backend(tmp_path):
    """A backend whose hold on the cores lock is taken, and the lock's path."""
    lock = tmp_path / "cores.lock"
    lock.touch()
    backend = LocalBackend()
    backend._hold = _CoresHold(lock)
    backend._hold.take()
    return backend, lock


@pytest.fixture
def held(tmp_path):
    """A backend whose hold on the cores is taken, and a measurement waiting for them."""
    backend, lock = holding_backend(tmp_path)
    waiter = subprocess.Popen([sys.executable, "-c", WAIT_FOR_LOCK, str(lock)])
    deadline = time.monotonic() + 10
    while waiter.pid not in (lock_waiters(lock) or set()) and time.monotonic() < deadline:
        time.sleep(0.01)
    yield backend, lock
    backend._hold.release()
    waiter.wait(timeout=10)


def test_the_cores_wait_for_the_newest_analytics_card(held):
    backend, lock = held
    # The run before has drawn its card (its end step goes on); the newest has not yet.
    backend._analytics = [FakeAnalytics(drawn=True), FakeAnalytics(drawn=False)]
    backend._hand_over_cores()
    assert backend._hold.held
    assert not any(analytics.paused for analytics in backend._analytics)


def test_once_the_cards_are_drawn_the_rest_is_paused_and_the_cores_handed_over(held):
    backend, lock = held
    backend._analytics = [FakeAnalytics(drawn=True), FakeAnalytics(drawn=True)]
    backend._hand_over_cores()
    assert not backend._hold.held
    assert all(analytics.paused for analytics in backend._analytics)
    assert os.getpid() not in (lock_holders(lock) or set())


def test_without_analytics_the_cores_go_to_the_waiting_measurement(held):
    backend, _ = held
    backend._hand_over_cores()
    assert not backend._hold.held


def test_the_hold_stays_while_nobody_waits(tmp_path):
    backend, _ = holding_backend(tmp_path)
    try:
        backend._analytics = [FakeAnalytics(drawn=True)]
        backend._hand_over_cores()
        # Nothing to hand over to: the analytics run goes on, unpaused.
        assert backend._hold.held and not backend._analytics[0].paused
    finally:
        backend._hold.release()
