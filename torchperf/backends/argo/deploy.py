"""Metaflow's ``Deployer(...).argo_workflows().create(...)`` in worker processes.

Metaflow's create changes the working directory of the process it runs in (``with_dir`` in
``metaflow/runner/utils.py``) and reloads its CLI modules, so creates never share a process:
each runs in a worker of a small process pool, one at a time per worker. A worker imports
Metaflow once and runs many creates. The Deployer's own output (``show_output``) is kept per
create, so that a create that fails is reported with Metaflow's own lines; its temporary
folders go with it (the Deployer is used as a context manager).
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import signal
from collections.abc import Mapping
from concurrent.futures import Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field

# How long teardown waits for creates still running before it stops their workers.
CREATE_GRACE_SECONDS = 10.0
# How long the Deployer waits for its create to say what it created (Metaflow's default: 1 h).
FILE_READ_TIMEOUT_SECONDS = 300


class DeployFailed(RuntimeError):
    """A create that failed; the message is what Metaflow printed, its last lines first-class."""


@dataclass(frozen=True)
class Create:
    """One create, as the Deployer takes it."""

    flow_file: str  # the path the flow is started by
    branch: str  # its @project branch
    config: dict  # its Config value ("config")
    env: Mapping[str, str]  # what the create's subprocess gets on top of the worker's environment
    cwd: str  # where the create runs
    options: dict = field(default_factory=dict)  # create's options: tags, workflow_title, ...
    only_json: bool = False  # compile only: nothing reaches Kubernetes


@dataclass(frozen=True)
class Created:
    """What a create made: the WorkflowTemplate's name, and the template itself (only_json)."""

    name: str
    flow_name: str
    template: dict | None = None


def _start_worker(pids) -> None:
    """A worker's start: say who it is, ignore Ctrl-C until a Deployer takes it over (Metaflow's
    handler then stops the create's subprocess), and import Metaflow once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pids.put(os.getpid())
    import metaflow  # noqa: F401
    from metaflow import Deployer  # noqa: F401


def _error_lines(printed: str, error: BaseException) -> str:
    """What Metaflow said about a create that failed: its output from the first error line on,
    else the exception's own message."""
    lines = [line.rstrip() for line in printed.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if "error" in line.lower() or "exception" in line.lower():
            return "\n".join(lines[index:])
    return "\n".join(lines[-5:]) or str(error)


def create(request: Create) -> Created:
    """Run one create in this (worker) process; DeployFailed with Metaflow's lines if it fails."""
    from metaflow import Deployer

    printed = io.StringIO()
    try:
        # show_output: the Deployer copies its subprocess's lines to sys.stdout, kept here.
        with (
            contextlib.redirect_stdout(printed),
            Deployer(
                request.flow_file,
                show_output=True,
                env=dict(request.env),
                cwd=request.cwd,
                file_read_timeout=FILE_READ_TIMEOUT_SECONDS,
                branch=request.branch,
                config_value=[("config", request.config)],
            ).argo_workflows() as deployer,
        ):
            deployed = deployer.create(only_json=request.only_json, **request.options)
            template = deployed.workflow_template if request.only_json else None
            return Created(deployed.name, deployed.flow_name, template)
    except Exception as error:  # noqa: BLE001 - every create failure is reported alike
        raise DeployFailed(_error_lines(printed.getvalue(), error)) from None


class DeployPool:
    """``workers`` processes that run creates; ``submit`` returns a future of ``Created``."""

    def __init__(self, workers: int):
        context = multiprocessing.get_context("spawn")  # no fork of a threaded process
        self._pids = context.SimpleQueue()
        self._known: set[int] = set()
        self._futures: set[Future] = set()
        self._executor = ProcessPoolExecutor(
            workers, mp_context=context, initializer=_start_worker, initargs=(self._pids,)
        )

    def warm(self) -> None:
        """Start the workers now (each imports Metaflow), while the caller does other work."""
        self.submit_call(os.getpid)

    def submit_call(self, function, *args) -> Future:
        future = self._executor.submit(function, *args)
        self._futures.add(future)
        future.add_done_callback(self._futures.discard)
        return future

    def submit(self, request: Create) -> Future:
        return self.submit_call(create, request)

    def _workers(self) -> set[int]:
        while not self._pids.empty():
            self._known.add(self._pids.get())
        return self._known

    def _signal(self, signum: int, below: bool = False) -> None:
        """``signum`` to every worker; with ``below``, to every process under them instead: the
        creates' subprocesses, which a stopped worker would leave running."""
        from torchperf.card_renders import children

        targets = self._workers()
        if below:
            targets, todo = set(), list(targets)
            while todo:
                found = children(todo.pop())
                targets.update(found)
                todo.extend(found)
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def cancel(self) -> None:
        """Creates not begun never begin; those running are stopped the way Ctrl-C stops them
        (Metaflow's handler in the worker ends the create's subprocess). The subprocesses get
        SIGTERM from here as well, so that none outlives the sweep, whatever its worker does."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._signal(signal.SIGTERM, below=True)
        self._signal(signal.SIGINT)

    def close(self, grace_seconds: float = CREATE_GRACE_SECONDS) -> list[Future]:
        """Wait up to ``grace_seconds`` for running creates, then stop the workers; the creates
        that had not ended (they may still create their template)."""
        running = [f for f in list(self._futures) if not f.done()]
        _, late = wait(running, timeout=grace_seconds)
        if late:
            self._signal(signal.SIGKILL, below=True)
            self._signal(signal.SIGKILL)
        # Waited for even then (the killed workers end at once): an executor left to exit
        # on its own raises in its atexit hook (EBADF) on Python 3.11.
        self._executor.shutdown(wait=True, cancel_futures=True)
        return list(late)
