"""How the local backend stops a run: every process under it, whatever it does with SIGTERM."""

import asyncio
import time
from types import SimpleNamespace

from torchperf.backends import local


def test_a_run_that_ignores_sigterm_is_killed_with_every_process_under_it(capfd):
    async def scenario():
        # GIVEN a run's process that ignores SIGTERM, with a child and a grandchild (as a
        # runtime has steps, and a step its card render), all ignoring SIGTERM too
        process = await asyncio.create_subprocess_exec(
            "sh", "-c", "trap '' TERM; sh -c 'sleep 60 & wait' & sleep 60 & wait"
        )
        deadline = time.monotonic() + 10
        while len(local._descendants(process.pid)) < 3:
            assert time.monotonic() < deadline, "the process tree never came up"
            await asyncio.sleep(0.01)
        tree = local._descendants(process.pid)
        # WHEN the backend stops it
        began = time.monotonic()
        await local._stop(SimpleNamespace(command_obj=SimpleNamespace(process=process)))
        return process, tree, time.monotonic() - began

    process, tree, seconds = asyncio.run(scenario())
    # THEN it and everything under it are gone, SIGKILLed once the grace had passed (on a
    # loaded machine the kernel may take a moment to end what it was sent)
    assert process.returncode == -9
    deadline = time.monotonic() + 10
    while local._living(tree) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not local._living(tree)
    assert local.KILL_GRACE_SECONDS <= seconds < local.KILL_GRACE_SECONDS + 5
    # ... and nothing was printed into the terminal
    printed = capfd.readouterr()
    assert printed.out == printed.err == ""
