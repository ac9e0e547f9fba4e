"""Lines for the user out of long outputs."""

from torchperf.errors import failure_reason, one_line

# The end of a TorchPerfFlow run whose step raised, as Metaflow prints it (cpu=3 on 2 cores).
FAILED_RUN = """\
2026-12-06 08:20:50.367 [1796545249672623/start/1 (pid 5561)] File "/x/torchperf/bench.py", line 134, in choose_cores
2026-12-06 08:20:50.367 [1796545249672623/start/1 (pid 5561)] raise ValueError(f"cpu={cpu} exceeds the {len(cores)} cores this process may use")
2026-12-06 08:20:50.368 [1796545249672623/start/1 (pid 5561)] ValueError: cpu=3 exceeds the 2 cores this process may use
2026-12-06 08:20:50.368 [1796545249672623/start/1 (pid 5561)]
2026-12-06 08:20:50.368 [1796545249672623/start/1 (pid 5561)] Task failed.
2026-12-06 08:20:50.376 Workflow failed.
2026-12-06 08:20:50.376 Terminating 0 active tasks...
2026-12-06 08:20:50.376 Flushing logs...
    Step failure:
    Step start (task-id 1) failed.
"""  # noqa: E501


def test_a_failed_run_gives_the_exception_its_step_raised_not_metaflows_last_line():
    assert one_line(FAILED_RUN) == "Step start (task-id 1) failed."
    why = "ValueError: cpu=3 exceeds the 2 cores this process may use"
    assert failure_reason(FAILED_RUN) == why


def test_output_without_an_exception_gives_its_last_line():
    assert failure_reason("starting\nkilled by the OOM killer\n") == "killed by the OOM killer"
    assert failure_reason("") == "no output"
