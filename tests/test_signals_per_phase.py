"""Ctrl-C (SIGINT) and SIGTERM end a sweep within seconds in every phase, locally and on Argo.

Each case runs ``sweep_deployer.py -m`` in a session of its own, makes one phase last by a real
means (a service that holds its calls, a long measurement, a workflow that never ends), waits
until the sweep is seen in that phase, sends the signal and checks: the sweep is back within
BOUND seconds with exit status 130 and no traceback, no process of its session is left, and on
Argo nothing of it is left in the API.

    phase      local                                      Argo (the loopback API)
    preflight  a resume whose metadata service holds      its check of Argo Events' objects
               the look-up of the tag's runs              held by the API
    deploy     a run's start-up held by the metadata      Metaflow's create of the analytics
               service (no handle on the run yet)         template held by the API
    wait       a variant measuring for minutes            variants' Workflows that never end
    teardown   the final analytics run under way          the final analytics Workflow running
    compile    (a local dry run runs nothing)             a dry run's compiles, whose uploads an
                                                          S3 endpoint holds
    deletes    (nothing to delete)                        teardown's delete of the Sensor, held
                                                          by the API: the rest is still deleted,
                                                          and the Sensor named as left
    created    (nothing to create)                        a create held after its template was
                                                          made (Metaflow's delete of a CronWorkflow
                                                          it does not need): teardown finds the
                                                          template by what Metaflow wrote on it
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import wait_for

# The loopback cluster's fixtures (api, environ and the servers under them), asked for by name.
from test_argo_backend import IMAGE, api, environ, s3_endpoint, service_url  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
BOUND = 10.0  # seconds from the signal to the sweep's exit
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}
PHASES = ("preflight", "deploy", "wait", "teardown")
CASES = [(backend, phase) for backend in ("local", "argo") for phase in PHASES]
CASES.append(("argo", "compile"))  # the preflight of a dry run, which compiles everything
CASES.append(("argo", "deletes"))  # teardown's own calls to the API
CASES.append(("argo", "created"))  # a create cut short after its template was made
pytestmark = [pytest.mark.e2e, pytest.mark.flow]


class SilentServer:
    """A loopback TCP server that takes connections and never answers (a service that hangs);
    ``connections`` counts those taken."""

    def __init__(self):
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._held: list[socket.socket] = []
        self.connections = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._socket.getsockname()[1]}"

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # closed
            while True:
                connection, _ = self._socket.accept()
                self._held.append(connection)
                self.connections += 1

    def close(self) -> None:
        self._socket.close()
        for connection in self._held:
            connection.close()


class HoldingS3(ThreadingHTTPServer):
    """An S3 endpoint on loopback that says every bucket exists (HEAD /bucket) and holds every
    other call unanswered (an upload that never completes); ``held`` counts those."""

    daemon_threads = True

    def __init__(self):
        self.held = 0
        self.stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self):
                if self.path.strip("/").count("/") == 0:  # HEAD /bucket: it exists
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.hold()

            def hold(self):
                server.held += 1
                server.stopping.wait()

            do_GET = do_PUT = do_POST = do_DELETE = hold

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()


def session_processes(session: int) -> list[str]:
    """The living processes of ``session`` (a sweep started as its leader), with their command
    lines: every process a sweep starts stays in its session."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        state, _, _, sid = stat.rsplit(")", 1)[1].split()[:4]
        if int(sid) == session and state != "Z":
            line = command.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{pid}: {line[:200]}")
    return found


@dataclass
class Phase:
    """One phase made to last: the command, its environment, when the sweep is in the phase,
    and what of the sweep is left outside its processes (nothing, once it has ended)."""

    overrides: list[str]
    env: dict
    entered: Callable[[], object]
    left: Callable[[], object] = lambda: None
    closing: list[Callable[[], None]] = field(default_factory=list)
    told: str = ""  # what the sweep must say of it


def local_phase(phase: str, request, tmp_path: Path) -> Phase:
    grid = ["cpu=1", "tensor_dim=32", "measure_seconds=0.2", "live_analytics=false"]
    env = dict(os.environ)
    if phase in ("preflight", "deploy"):
        # Metaflow's metadata service on a socket that never answers: every call waits.
        service = SilentServer()
        env |= {"METAFLOW_DEFAULT_METADATA": "service", "METAFLOW_SERVICE_URL": service.url}
        # A resume looks for its tag's runs before anything runs; a new sweep starts its first
        # run, whose start-up registers it with the service.
        tag = ["tag=sigpreflight"] if phase == "preflight" else []
        return Phase(grid + tag, env, lambda: service.connections > 0, closing=[service.close])
    sweep_dir = tmp_path / "sweep"
    if phase == "wait":
        grid[2] = "measure_seconds=600"
        return Phase(grid, env, lambda: list((sweep_dir / ".turns").glob("*.go")))
    # teardown: the variant has ended and the final analytics run is under way.
    return Phase(grid, env, lambda: analytics_processes(request.node.sweep_session))


def analytics_processes(session: int) -> list[str]:
    return [p for p in session_processes(session) if "sweep_analytics.py" in p]


def analytics_workflows(kube, *phases: str) -> list[dict]:
    """The sweep's analytics Workflows the API holds (in one of ``phases``, where given)."""
    return [
        wf
        for wf in kube.workflows()
        if wf["metadata"]["labels"].get("torchperf/variant") == "analytics"
        and (not phases or wf["status"]["phase"] in phases)
    ]


def argo_phase(phase: str, request, tmp_path: Path) -> Phase:
    kube = request.getfixturevalue("api")
    env = request.getfixturevalue("environ")
    overrides = [
        "backend=argo", f"backend.image={IMAGE}", "backend.poll_seconds=0.2", "cpu=1",
        "tensor_dim=32,64", "measure_seconds=0.2",
    ]  # fmt: skip
    closing = []
    if phase == "compile":  # a dry run's compiles each upload the flow's code package to S3
        s3 = HoldingS3()
        closing.append(s3.close)
        env = {**env, "METAFLOW_S3_ENDPOINT_URL": s3.url}
        overrides.append("dry_run=true")
        entered = lambda: s3.held  # noqa: E731
    elif phase == "deletes":  # teardown deletes the Sensor first: no event starts a run then

        def entered():
            # Held from the final analytics run on: Metaflow's creates delete Sensors too.
            if not kube.holding and analytics_workflows(kube):
                kube.holding.append(("DELETE", "/sensors/"))
            return kube.held

    elif phase == "preflight":  # the look for the EventSource the analytics Sensor will name
        kube.holding.append(("GET", "/eventsources/"))
        entered = lambda: kube.held  # noqa: E731
    elif phase == "deploy":  # Metaflow's create of the analytics flow's WorkflowTemplate
        kube.holding.append(("GET", "/workflowtemplates/"))
        entered = lambda: kube.held  # noqa: E731
    elif phase == "created":  # the analytics template is made; its create goes on, held
        kube.holding.append(("DELETE", "/cronworkflows/"))
        entered = lambda: kube.held and kube.names("workflowtemplates")  # noqa: E731
    elif phase == "wait":
        kube.hang.add("c1_n")
        entered = lambda: len(kube.running()) == 2  # noqa: E731
    else:  # teardown: the variants have succeeded, the final analytics run never ends
        kube.hang.add("_analytics")
        entered = lambda: analytics_workflows(kube, "Running")  # noqa: E731

    # The Sensor whose delete the API holds cannot go: the sweep must say so, and leave no more.
    kinds = ("workflows", "workflowtemplates", *(() if phase == "deletes" else ("sensors",)))
    told = "teardown left 1 thing(s) undone" if phase == "deletes" else ""

    def left():
        return {kind: kube.names(kind) for kind in kinds if kube.names(kind)}

    return Phase(overrides, env, entered, left, closing, told)


@pytest.mark.parametrize("signame", SIGNALS)
@pytest.mark.parametrize(("backend", "phase"), CASES, ids=["-".join(case) for case in CASES])
def test_a_signal_in_any_phase_ends_the_sweep_in_seconds_and_leaves_nothing(
    backend, phase, signame, request, tmp_path
):
    # GIVEN a sweep held in one phase
    made = (local_phase if backend == "local" else argo_phase)(phase, request, tmp_path)
    command = [
        sys.executable, str(ROOT / "sweep_deployer.py"), "-m", *made.overrides,
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]  # fmt: skip
    sweep = subprocess.Popen(
        command, env={**made.env, "PYTHONFAULTHANDLER": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    request.node.sweep_session = sweep.pid
    try:
        wait_for(lambda: made.entered() or sweep.poll() is not None, 240)
        assert sweep.poll() is None, f"the sweep ended before its {phase}: {sweep.communicate()}"
        # WHEN the signal arrives
        signalled = time.monotonic()
        sweep.send_signal(SIGNALS[signame])
        try:
            out, err = sweep.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            sweep.send_signal(signal.SIGABRT)  # its threads' stacks, through faulthandler
            pytest.fail(f"still running a minute after {signame}: {sweep.communicate()[1]}")
        took = time.monotonic() - signalled
        # ... and the processes it stopped have had a moment to end (not enough for a run to
        # end by itself: the final analytics run takes several seconds)
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not session_processes(sweep.pid), 1)
        left = session_processes(sweep.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sweep.pid, signal.SIGKILL)
        sweep.communicate()
        for close in made.closing:
            close()
    # THEN it is back within seconds, as interrupted, and nothing of it is left
    assert sweep.returncode == 130, (out, err)
    assert took < BOUND, (took, err)
    assert "Traceback" not in err, err
    assert left == [], left
    assert made.told in err, (out, err)
    assert not made.left(), (made.left(), err)


def test_ctrl_c_while_a_local_run_is_prepared_is_raised_not_lost():
    """Metaflow's Runner holds SIGINT for itself while it is built (it loads the flow): a
    Ctrl-C then must still stop the sweep."""
    from torchperf.backends.local import _runner

    before = signal.getsignal(signal.SIGINT)

    def press_ctrl_c_while_metaflow_holds_it():
        deadline = time.monotonic() + 30
        while signal.getsignal(signal.SIGINT) is before and time.monotonic() < deadline:
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGINT)

    loop = asyncio.new_event_loop()
    presser = threading.Thread(target=press_ctrl_c_while_metaflow_holds_it, daemon=True)
    presser.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(_runner("torchtest.py"))
    finally:
        presser.join(30)
        loop.close()
    assert signal.getsignal(signal.SIGINT) is before
