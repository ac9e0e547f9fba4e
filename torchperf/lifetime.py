"""Process start-up and exit cost less when the garbage collector skips long-lived objects.

Every Metaflow step, runtime and card render is a fresh Python process that imports Metaflow
(and torch, pandas, matplotlib in the steps that use them), then exits. Modules and what they
define live until exit, yet the cyclic collector walks them again and again while they are
imported and once more at exit: about 0.4 s of CPU for torch and 0.08 s for Metaflow on this
kind of machine, which on 2 cores the next measurement waits for
(``benchmarks/sweep_overhead.py``). ``gc.freeze`` moves them out of its reach for good.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def long_lived() -> Iterator[None]:
    """Whatever the block creates (imports, say) is never collected: no collector passes it."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
