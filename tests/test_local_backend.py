"""How the local backend stops a run: every process under it, whatever it does with SIGTERM."""

import asyncio
import time
from types import SimpleNamespace

from tests.conftest import wait_for
from torchperf.backends import local


def running(pid: int) -> bool:
    """Whether ``pid`` runs, as /proc shows it: a zombie has ended, though nobody collected it."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def test_a_run_that_ignores_sigterm_is_killed_with_every_process_under_it(capfd, tmp_path):
    pids = tmp_path / "pids"
    # GIVEN a run's process that ignores SIGTERM, with a child and a grandchild (as a runtime
    # has steps, and a step its card render), all ignoring SIGTERM too; each says its pid
    script = (
        f"trap '' TERM; sh -c 'sleep 60 & echo $! >> {pids}; wait' & echo $! >> {pids}; "
        f"sleep 60 & echo $! >> {pids}; wait"
    )

    def said():
        lines = pids.read_text().split() if pids.exists() else []
        return len(lines) == 3 and lines

    async def scenario():
        process = await asyncio.create_subprocess_exec("sh", "-c", script)
        under = await asyncio.to_thread(wait_for, said, 10, "the process tree never came up")
        # WHEN the backend stops it (the one private seam: Metaflow's process handle)
        began = time.monotonic()
        await local._stop(SimpleNamespace(command_obj=SimpleNamespace(process=process)))
        return process, [int(pid) for pid in under], time.monotonic() - began

    process, under, seconds = asyncio.run(scenario())
    # THEN it and everything under it are gone, SIGKILLed once the grace had passed (on a
    # loaded machine the kernel may take a moment to end what it was sent)
    assert process.returncode == -9
    wait_for(lambda: not any(map(running, under)), 10, "a process under the run lives on")
    assert local.KILL_GRACE_SECONDS <= seconds < local.KILL_GRACE_SECONDS + 5
    # ... and nothing was printed into the terminal
    printed = capfd.readouterr()
    assert printed.out == printed.err == ""
