"""One process that imports Metaflow once and runs every flow command in a forked child of its own.

    python -m torchperf.backends.compile_server SOCKET   # ends when its standard input closes

A flow command in a fresh process pays Python's start-up and Metaflow's imports (the CLI, the
Argo plugin, the Kubernetes client's models, boto3) before it does anything; here each child
starts from a copy of a process that has them, with an S3 client and the compressed start of
every code package ready (``warm``). Metaflow reads its settings at import: one server serves
one environment (the backend starts one per image), and a command sent with other ``METAFLOW_*``
settings is refused.

Two kinds of command come over the Unix socket SOCKET, one per connection: a JSON line, with the
command's stdin, stdout and stderr passed beside it (SCM_RIGHTS):
- the preflight's compiles, ``{"argv": [FLOW.py, *options], "capture": OUT}``: the child runs
  ``argo_compile.compile_flow``, which writes both manifests to OUT;
- the Deployer's ``create``, ``{"argv": [FLOW.py, *options], "cwd": DIR, "env": {...}}``, sent by
  ``fork_launcher.py``, which the backend gives Metaflow's Deployer in place of ``python``.
The answer is ``{"status": N}`` once the child has ended (N its exit status, negative: the signal
that ended it), or ``{"refused": WHY}`` at once. A connection that closes early takes its child
with it (SIGKILL).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import os
import runpy
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Mapping
from pathlib import Path

from torchperf.lifetime import long_lived

LAUNCHER = Path(__file__).with_name("fork_launcher.py")


# -- the server ----------------------------------------------------------------------------


def preload() -> None:
    """What every command imports: imported (and frozen out of the collector's reach) once."""
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

        for module in PRELOADED_TOO:
            with contextlib.suppress(ImportError):
                __import__(module)
        # The kubernetes client loads each model class on first use; the Argo compile uses these.
        for model in KUBERNETES_MODELS:
            getattr(kubernetes.client, model, None)
        get_version()  # asks git once, then remembers
    # Not metaflow.cli: it takes its options from the flow being loaded, so each child imports it.


# What metaflow.cli imports beside itself (its plugins' commands; not logs_cli, which imports
# metaflow.cli), and the Deployer's create.
PRELOADED_TOO = (
    "metaflow.lint",
    "metaflow.plugins.airflow.airflow_cli",
    "metaflow.plugins.aws.step_functions.step_functions_cli",
    "metaflow.plugins.cards.card_cli",
    "metaflow.plugins.datatools.s3.s3op",
    "metaflow.plugins.kubernetes.kubernetes_cli",
    "metaflow.plugins.kubernetes.spot_metadata_cli",
    "metaflow.plugins.package_cli",
    "metaflow.plugins.tag_cli",
    "metaflow.pylint_wrapper",
    "metaflow.runner.deployer",
    "webbrowser",
)
KUBERNETES_MODELS = (
    "CoreV1ResourceClaim", "V1AppArmorProfile", "V1Capabilities", "V1ConfigMapEnvSource",
    "V1ConfigMapKeySelector", "V1Container", "V1ContainerPort", "V1ContainerResizePolicy",
    "V1ContainerRestartRule", "V1ContainerRestartRuleOnExitCodes", "V1EnvFromSource", "V1EnvVar",
    "V1EnvVarSource", "V1ExecAction", "V1FileKeySelector", "V1GRPCAction", "V1HTTPGetAction",
    "V1HTTPHeader", "V1Lifecycle", "V1LifecycleHandler", "V1ObjectFieldSelector", "V1Probe",
    "V1ResourceFieldSelector", "V1ResourceRequirements", "V1SELinuxOptions", "V1SeccompProfile",
    "V1SecretEnvSource", "V1SecretKeySelector", "V1SecurityContext", "V1SleepAction",
    "V1TCPSocketAction", "V1VolumeDevice", "V1VolumeMount", "V1WindowsSecurityContextOptions",
)  # fmt: skip


def warm() -> None:
    """Start, before any fork, the work every command repeats (WARM_UPS)."""
    with long_lived():
        for warm_up in WARM_UPS:
            warm_up()


def _first_s3_client_from_the_server() -> None:
    """The first S3 client a child asks for is one built here (botocore parses its service
    models for every new session: about 0.1 s of CPU); a later one, e.g. a reset after an
    error, is built anew as Metaflow would build it."""
    if os.environ.get("METAFLOW_DEFAULT_DATASTORE") != "s3":
        return
    from metaflow.plugins.datatools.s3 import s3

    build = s3.get_s3_client
    ready: list[tuple] = []  # the server's client; each child takes its own copy once

    def get_s3_client(s3_role_arn=None, s3_session_vars=None, s3_client_params=None):
        if ready and not (s3_role_arn or s3_session_vars or s3_client_params):
            return ready.pop()
        return build(
            s3_role_arn=s3_role_arn,
            s3_session_vars=s3_session_vars,
            s3_client_params=s3_client_params,
        )

    client = s3.S3Client()  # the datastore's own: no role, Metaflow's session settings
    ready.append((client.client, client.error))
    s3.get_s3_client = get_s3_client


class _PackagePrefix:
    """Metaflow's own files, tarred and compressed once before the fork.

    Every code package Metaflow builds starts with them, in the same order, so the first
    package a child builds continues this stream (the bytes are those a fresh build gives:
    the same input to the same compressor). A package that turns out to start otherwise, or
    a file that changed since, is built from scratch as Metaflow builds it.
    """

    @classmethod
    def install(cls) -> None:
        from metaflow.packaging_sys import ContentType
        from metaflow.packaging_sys.tar_backend import TarPackagingBackend
        from metaflow.packaging_sys.v1 import MetaflowCodeContentV1

        # Metaflow's files and its extensions' only: no module of ours is looked at here.
        content = MetaflowCodeContentV1(criteria=lambda module: False)
        files = [
            (path, arcname, _stamp(path))
            for path, arcname in content.contents(ContentType.CODE_CONTENT.value)
            if isinstance(path, str)
        ]
        built = TarPackagingBackend().create()
        for path, arcname, _ in files:
            built.add_file(path, arcname=arcname)
        create, add_file, add_data, close = (
            TarPackagingBackend.create, TarPackagingBackend.add_file,
            TarPackagingBackend.add_data, TarPackagingBackend.close,
        )  # fmt: skip
        unused = [True]

        def start_over(backend) -> None:
            """Not this package's start: build what it has added so far from scratch."""
            added = len(files) - len(backend._torchperf_expected)
            backend._torchperf_expected = None
            create(backend)
            for path, arcname, _ in files[:added]:
                add_file(backend, path, arcname=arcname)

        def prefixed_create(backend):
            expected = getattr(backend, "_torchperf_expected", None)
            if expected is not None and len(expected) == len(files):
                return backend  # created again (``with backend.create()``), still empty
            backend._torchperf_expected = None
            if not unused[0]:
                return create(backend)
            unused[0] = False
            backend._buf, backend._archive = built._buf, built._archive
            backend._torchperf_expected = deque(files)
            return backend

        def prefixed_add_file(backend, filename, arcname=None):
            expected = getattr(backend, "_torchperf_expected", None)
            if expected:
                path, name, stamp = expected[0]
                if (path, name) == (filename, arcname) and _stamp(path) == stamp:
                    expected.popleft()
                    return None
                start_over(backend)
            return add_file(backend, filename, arcname=arcname)

        def prefixed_add_data(backend, data, arcname):
            if getattr(backend, "_torchperf_expected", None):
                start_over(backend)
            return add_data(backend, data, arcname)

        def prefixed_close(backend):
            if getattr(backend, "_torchperf_expected", None):
                start_over(backend)
            return close(backend)

        TarPackagingBackend.create = prefixed_create
        TarPackagingBackend.add_file = prefixed_add_file
        TarPackagingBackend.add_data = prefixed_add_data
        TarPackagingBackend.close = prefixed_close


# The S3 client a code package is uploaded with, and the package's first part (Metaflow's own
# files, the same in every package: tarred and compressed once here, continued in each child).
# benchmarks/argo_compile_cost.py leaves each out in turn to measure what it saves.
WARM_UPS = [_first_s3_client_from_the_server, _PackagePrefix.install]


def _stamp(path: str) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


def _run_child(request: dict, fds: list[int], servers: list[int]) -> None:
    """In the forked child: the flow's CLI on the sent stdin/stdout/stderr; never returns.
    ``servers``: the server's own descriptors (its socket, connections, children), closed here
    so that only the server holds them."""
    status = 1
    try:
        for fd in servers:
            with contextlib.suppress(OSError):
                os.close(fd)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        gc.disable()  # a short-lived process: nothing worth collecting
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        if "env" in request:
            os.environ.clear()
            os.environ.update(request["env"])
        if "cwd" in request:
            os.chdir(request["cwd"])
        argv = list(request["argv"])
        # As `python FLOW.py` sets it: the (resolved) folder of the flow file comes first.
        sys.path[0] = os.path.dirname(os.path.realpath(argv[0]))
        try:
            if request.get("capture"):
                from torchperf.backends.argo_compile import compile_flow

                compile_flow(request["capture"], argv[0], argv[1:])
            else:
                sys.argv = argv
                runpy.run_path(argv[0], run_name="__main__")
            status = 0
        except SystemExit as done:  # the flow's CLI ends with sys.exit
            code = done.code
            status = code if isinstance(code, int) else (0 if code is None else 1)
    except BaseException:  # noqa: BLE001 - reported through stderr and the status
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)


def _refusal(request: dict) -> str | None:
    """Why this process cannot run ``request`` as a fresh Python would, or None."""
    if "env" not in request:
        return None
    ours = {k: v for k, v in os.environ.items() if k.startswith("METAFLOW_")}
    theirs = {k: v for k, v in request["env"].items() if k.startswith("METAFLOW_")}
    differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    return f"Metaflow settings differ: {', '.join(differ)}" if differ else None


def _receive(connection: socket.socket) -> tuple[dict, list[int]]:
    """One request line and the descriptors sent with it."""
    connection.settimeout(10)
    data, fds, _, _ = socket.recv_fds(connection, 1 << 20, 3)
    while not data.endswith(b"\n"):
        more = connection.recv(1 << 20)
        if not more:
            break
        data += more
    connection.settimeout(None)
    return json.loads(data), fds


def serve(listener: socket.socket, lifeline=None) -> None:
    """Fork a child per request until ``lifeline`` (stdin) closes and every child has ended."""
    lifeline = lifeline or sys.stdin.buffer
    # Ctrl-C reaches the sweep and every child; this process ends when its input closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    selector = selectors.DefaultSelector()
    selector.register(lifeline, selectors.EVENT_READ, "lifeline")
    selector.register(listener, selectors.EVENT_READ, "listener")
    running: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, its connection)
    open_input = True
    while open_input or running:
        for key, _ in selector.select():
            if key.data == "lifeline":
                if not os.read(lifeline.fileno(), 65536):
                    selector.unregister(lifeline)
                    selector.unregister(listener)
                    listener.close()
                    open_input = False
            elif key.data == "listener":
                connection, _ = listener.accept()
                try:
                    request, fds = _receive(connection)
                except (OSError, ValueError):
                    connection.close()
                    continue
                why = _refusal(request)
                if why:
                    with contextlib.suppress(OSError):
                        connection.sendall(json.dumps({"refused": why}).encode() + b"\n")
                    connection.close()
                else:
                    pid = os.fork()
                    if pid == 0:
                        servers = [selector.fileno(), listener.fileno(), connection.fileno()]
                        servers += [fd for fd, (_, c) in running.items() for fd in (fd, c.fileno())]
                        _run_child(request, fds, servers)
                    pidfd = os.pidfd_open(pid)
                    running[pidfd] = (pid, connection)
                    selector.register(pidfd, selectors.EVENT_READ, ("child", pidfd))
                    selector.register(connection, selectors.EVENT_READ, ("hang-up", pidfd))
                for fd in fds:
                    os.close(fd)
            elif key.data[0] == "hang-up":  # the sender is gone (or sent more): end its child
                if key.data[1] not in running:  # ended in this same batch: already answered
                    continue
                pid, _ = running[key.data[1]]
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                selector.unregister(key.fileobj)
            else:
                pidfd = key.data[1]
                pid, connection = running.pop(pidfd)
                selector.unregister(pidfd)
                os.close(pidfd)
                with contextlib.suppress(KeyError, ValueError):
                    selector.unregister(connection)
                _, wait_status = os.waitpid(pid, 0)
                status = os.waitstatus_to_exitcode(wait_status)
                with contextlib.suppress(OSError):
                    connection.sendall(json.dumps({"status": status}).encode() + b"\n")
                connection.close()


def main(argv: list[str]) -> None:
    (path,) = argv
    # Whatever an import prints goes to stderr: stdout says only that the server is ready.
    ready = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    preload()
    warm()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(256)
    ready.write("ready\n")
    ready.flush()
    serve(listener)


# -- the sweep's side ----------------------------------------------------------------------


_OUTPUTS = itertools.count()  # names of compile outputs, unique across servers sharing a scratch


class CompileFailed(RuntimeError):
    """A compile ended with a non-zero status; the message is what the flow's CLI printed."""


class CompileServer:
    """One server process, any number of threads sending it commands.

    ``compile`` blocks its thread until the child has ended and returns the manifests; the
    caller bounds how many run at once (the server forks one child per command it is sent).
    ``launcher`` is the command line that stands in for ``python`` and sends the rest of its
    command line here (``fork_launcher.py``).
    """

    SERVER = ("-m", "torchperf.backends.compile_server")  # how Python starts the server

    def __init__(self, env: Mapping[str, str], cwd: Path, scratch: Path):
        self.scratch = scratch
        # A folder of our own (mode 0700): nobody else may send commands to run as us, and the
        # path stays under the 108 bytes a Unix socket's name may have.
        self._socket_dir = tempfile.mkdtemp(prefix="torchperf-")
        self.socket_path = os.path.join(self._socket_dir, "server.sock")
        self._process = subprocess.Popen(
            [sys.executable, *self.SERVER, self.socket_path],
            env=dict(env), cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._wait_ready, daemon=True)
        self._reader.start()

    @property
    def launcher(self) -> list[str]:
        """The command line that stands in for ``python``, once the server listens."""
        self._ready.wait()
        # -I -S: the stand-in needs nothing but the standard library, so it starts in ~10 ms.
        return [sys.executable, "-I", "-S", str(LAUNCHER), self.socket_path]

    def _wait_ready(self) -> None:
        self._process.stdout.readline()  # "ready", or nothing if the server died
        self._ready.set()

    def _connect(self) -> socket.socket:
        self._ready.wait()
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            connection.connect(self.socket_path)
        except OSError:
            connection.close()
            raise CompileFailed("the compile server exited") from None
        return connection

    def compile(self, flow_file: str, options: list[str]) -> dict:
        """Compile ``flow_file`` with the flow CLI ``options``: its manifests (template, Sensor)."""
        out = self.scratch / f"compile-{next(_OUTPUTS)}.json"
        log = Path(f"{out}.log")
        with open(os.devnull, "rb") as null, open(log, "wb") as output:
            connection = self._connect()
            with connection:
                request = {"argv": [flow_file, *options], "capture": str(out)}
                try:
                    socket.send_fds(
                        connection, [json.dumps(request).encode() + b"\n"],
                        [null.fileno(), output.fileno(), output.fileno()],
                    )  # fmt: skip
                    answer = connection.makefile("rb").readline()
                except OSError:
                    answer = b""
        printed = log.read_text(errors="replace")
        log.unlink(missing_ok=True)
        status = json.loads(answer).get("status", 1) if answer else None
        if status is None:
            out.unlink(missing_ok=True)
            raise CompileFailed(printed or "the compile server exited")
        if status != 0 or not out.exists():
            out.unlink(missing_ok=True)
            raise CompileFailed(printed or f"exit status {status}")
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
        shutil.rmtree(self._socket_dir, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
