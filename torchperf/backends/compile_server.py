"""One process that imports Metaflow once and compiles every flow in a forked child of its own.

    python -m torchperf.backends.compile_server      # JSON lines: requests in, results out

A compile in a fresh process pays Python's start-up and Metaflow's imports (the CLI, the Argo
plugin, the Kubernetes decorator, the S3 client) before it compiles anything; here each child
starts from a copy of a process that has them, so it only loads the flow, builds and uploads its
code package and compiles (``argo_compile.compile_flow``). Metaflow reads its settings at import:
one server serves one environment (the backend starts one per image).

A request is ``{"id": 1, "out": PATH, "flow": FLOW.py, "options": [...]}``; the child writes the
manifests to PATH and what the flow's CLI printed to PATH.log; the answer is ``{"id": 1,
"status": N}``, N the child's exit status (negative: the signal that ended it). The server takes
as many requests at once as it is sent and exits when its input closes and its children are done.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path

from torchperf.lifetime import long_lived


def preload() -> None:
    """What every compile imports: imported (and frozen out of the collector's reach) once."""
    with long_lived():
        import boto3.s3.transfer  # noqa: F401
        import kubernetes.client  # noqa: F401
        import kubernetes.config  # noqa: F401
        import metaflow  # noqa: F401
        import metaflow.plugins.argo.argo_workflows  # noqa: F401
        import metaflow.plugins.argo.argo_workflows_cli  # noqa: F401
        import metaflow.plugins.cards.card_decorator  # noqa: F401
        import metaflow.plugins.datatools.s3.s3  # noqa: F401
        import metaflow.plugins.kubernetes.kubernetes_decorator  # noqa: F401
        import metaflow.system  # noqa: F401
        from metaflow.metaflow_version import get_version

        import torchperf.backends.argo_compile  # noqa: F401
        import torchperf.plan  # noqa: F401
        import torchperf.settings  # noqa: F401

        get_version()  # asks git once, then remembers
    # Not metaflow.cli: it takes its options from the flow being loaded, so each child imports it.


def _child(request: dict) -> None:
    """In the forked child: the flow's CLI, output to the log; never returns."""
    status = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDONLY)
        log = os.open(request["out"] + ".log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        from torchperf.backends.argo_compile import compile_flow

        try:
            compile_flow(request["out"], request["flow"], list(request["options"]))
            status = 0
        except SystemExit as done:  # the flow's CLI ends with sys.exit
            code = done.code
            status = code if isinstance(code, int) else (0 if code is None else 1)
    except BaseException:  # noqa: BLE001 - reported through the log and the status
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)


def serve(requests=None, answers=None) -> None:
    """Fork a child per request line until the input closes; answer each when its child ends."""
    requests = requests or sys.stdin.buffer
    answers = answers or sys.stdout
    # Ctrl-C reaches the sweep and every child; this process ends when its input closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    selector = selectors.DefaultSelector()
    selector.register(requests, selectors.EVENT_READ, None)
    pending = b""
    running: dict[int, tuple[int, int]] = {}  # pidfd -> (pid, request id)
    open_input = True
    while open_input or running:
        for key, _ in selector.select():
            if key.data is None:
                chunk = os.read(requests.fileno(), 65536)
                if not chunk:
                    selector.unregister(requests)
                    open_input = False
                    continue
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in filter(None, lines):
                    request = json.loads(line)
                    pid = os.fork()
                    if pid == 0:
                        _child(request)
                    pidfd = os.pidfd_open(pid)
                    running[pidfd] = (pid, request["id"])
                    selector.register(pidfd, selectors.EVENT_READ, pidfd)
            else:
                pidfd = key.data
                pid, request_id = running.pop(pidfd)
                selector.unregister(pidfd)
                os.close(pidfd)
                _, wait_status = os.waitpid(pid, 0)
                status = os.waitstatus_to_exitcode(wait_status)
                answers.write(json.dumps({"id": request_id, "status": status}) + "\n")
                answers.flush()


def main() -> None:
    # Answers get a descriptor of their own: whatever an import prints goes to stderr instead.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    preload()
    serve(answers=answers)


class CompileFailed(RuntimeError):
    """A compile ended with a non-zero status; the message is what the flow's CLI printed."""


class CompileServer:
    """The sweep's side: one server process, any number of threads sending it compiles.

    ``compile`` blocks its thread until the child has ended and returns the manifests; the
    caller bounds how many run at once (the server forks one child per request it is sent).
    """

    def __init__(self, env: Mapping[str, str], cwd: Path, scratch: Path):
        self.scratch = scratch
        self._process = subprocess.Popen(
            [sys.executable, "-m", "torchperf.backends.compile_server"],
            env=dict(env), cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._waiting: dict[int, Future] = {}
        self._reader = threading.Thread(target=self._read, daemon=True, name="compile-server")
        self._reader.start()

    def _read(self) -> None:
        for line in self._process.stdout:
            answer = json.loads(line)
            with self._lock:
                future = self._waiting.pop(answer["id"])
            future.set_result(answer["status"])
        with self._lock:  # the server is gone: nothing more will be answered
            waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            future.set_exception(CompileFailed("the compile server exited"))

    def compile(self, flow_file: str, options: list[str]) -> dict:
        """Compile ``flow_file`` with the flow CLI ``options``: its manifests (template, Sensor)."""
        future: Future = Future()
        with self._lock:
            request_id = next(self._ids)
            out = self.scratch / f"compile-{request_id}.json"
            self._waiting[request_id] = future
            request = {"id": request_id, "out": str(out), "flow": flow_file, "options": options}
            try:
                self._process.stdin.write((json.dumps(request) + "\n").encode())
                self._process.stdin.flush()
            except (BrokenPipeError, ValueError):
                self._waiting.pop(request_id)
                raise CompileFailed("the compile server exited") from None
        status = future.result()
        log = Path(f"{out}.log")
        output = log.read_text(errors="replace") if log.exists() else ""
        log.unlink(missing_ok=True)
        if status != 0 or not out.exists():
            raise CompileFailed(output or f"exit status {status}")
        compiled = json.loads(out.read_text())
        out.unlink()
        return compiled

    def close(self) -> None:
        """Let the server finish what it runs and exit; wait for it (its CPU is then counted)."""
        if self._process.stdin and not self._process.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self._process.stdin.close()
        self._process.wait()
        self._reader.join()
        self._process.stdout.close()


if __name__ == "__main__":
    main()
