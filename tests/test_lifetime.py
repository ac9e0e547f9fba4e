"""Objects imported under ``long_lived`` are left out of every later collection."""

import gc

from torchperf.lifetime import long_lived


def test_objects_made_in_the_block_are_frozen_and_the_collector_is_back_on():
    gc.unfreeze()
    try:
        before = gc.get_freeze_count()
        with long_lived():
            assert not gc.isenabled()
            made = [{"n": n} for n in range(1000)]
        assert gc.isenabled()
        assert gc.get_freeze_count() >= before + len(made)
        # Frozen objects are no longer in any generation the collector walks.
        assert not any(obj is made[0] for obj in gc.get_objects())
    finally:
        gc.unfreeze()


def test_a_disabled_collector_stays_disabled():
    gc.disable()
    try:
        with long_lived():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()
