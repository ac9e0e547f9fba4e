"""The compile server runs a command sent by fork_launcher.py as `python FILE ...` would run it.

Real processes throughout: the server (Metaflow imported, warmed), the launcher started the way
Metaflow's Deployer starts `python`, and small Python files standing in for a flow's CLI.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from torchperf.backends.compile_server import CompileServer

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.flow


@pytest.fixture
def server(tmp_path):
    running = CompileServer(dict(os.environ), ROOT, tmp_path)
    try:
        yield running
    finally:
        running.close()


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "command.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


def launch(server: CompileServer, command: list[str], **kwargs) -> subprocess.Popen:
    """Start ``python COMMAND`` the way the backend's Deployer does: through the launcher."""
    return subprocess.Popen(
        [*server.launcher, *command],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        **kwargs,
    )  # fmt: skip


def test_a_launched_command_runs_in_a_child_of_the_server_with_its_io_args_cwd_and_status(
    server, tmp_path
):
    # GIVEN a command that reads stdin, reports where it runs and exits with 3
    command = script(
        tmp_path,
        """
        import os, sys
        print(os.getppid(), os.getcwd(), " ".join(sys.argv[1:]), sys.stdin.read(), sep="|")
        print("to stderr", file=sys.stderr)
        sys.exit(3)
        """,
    )
    workdir = tmp_path / "work"
    workdir.mkdir()
    # WHEN the launcher is started for it
    launched = launch(server, [command, "--flag", "value"], cwd=workdir)
    out, err = launched.communicate("from stdin", timeout=60)
    # THEN the server's forked child ran it, on the launcher's stdin/stdout/stderr, in its cwd
    parent, cwd, args, read = out.strip().split("|")
    assert int(parent) == server._process.pid
    assert (cwd, args, read) == (str(workdir), "--flag value", "from stdin")
    assert err.strip() == "to stderr"
    # ... and the launcher exits as the command did
    assert launched.returncode == 3


def test_a_command_with_other_metaflow_settings_runs_as_a_fresh_python(server, tmp_path):
    # GIVEN a Metaflow setting the server was not started with (it read its own at import)
    command = script(tmp_path, "import os; print(os.getppid(), os.environ['METAFLOW_PROFILE'])")
    env = {**os.environ, "METAFLOW_PROFILE": "other"}
    # WHEN the launcher is started for it
    launched = launch(server, [command], env=env)
    out, err = launched.communicate(timeout=60)
    # THEN it ran as the plain `python command.py` (the launcher's own process), not forked
    parent, profile = out.split()
    assert int(parent) == os.getpid() and profile == "other"
    assert launched.returncode == 0
    # ... saying why in its output (the Deployer keeps it in its log)
    assert "Metaflow settings differ: METAFLOW_PROFILE" in err


def test_without_a_server_the_launcher_runs_the_command_itself(tmp_path):
    # GIVEN a server that has exited
    stopped = CompileServer(dict(os.environ), ROOT, tmp_path)
    stopped.close()
    command = script(tmp_path, "import os; print(os.getppid())")
    # WHEN the launcher is started for a command
    launched = launch(stopped, [command])
    out, _ = launched.communicate(timeout=60)
    # THEN the command still ran, as a fresh Python
    assert int(out) == os.getpid() and launched.returncode == 0


def test_killing_the_launcher_kills_its_command(server, tmp_path):
    # GIVEN a launched command that runs until stopped
    pid_file = tmp_path / "pid"
    command = script(
        tmp_path,
        f"""
        import os, pathlib, time
        pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))
        time.sleep(600)
        """,
    )
    launched = launch(server, [command])
    deadline = time.monotonic() + 60
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    # WHEN the launcher is killed, as Metaflow kills a command it gave up on
    launched.send_signal(signal.SIGKILL)
    launched.communicate(timeout=10)
    # THEN the command in the server's child is gone too
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists()


def test_the_server_ends_when_the_sweep_lets_go_once_its_children_are_done(tmp_path):
    # GIVEN a server with a command still running
    running = CompileServer(dict(os.environ), ROOT, tmp_path)
    command = script(tmp_path, "import time; time.sleep(1); print('done')")
    launched = launch(running, [command])
    time.sleep(0.3)
    # WHEN the sweep closes it
    running.close()
    # THEN the command finished first (its output came back) and the server is gone
    out, _ = launched.communicate(timeout=60)
    assert out.strip() == "done" and launched.returncode == 0
    assert running._process.returncode == 0
    assert not Path(running.socket_path).exists()


def test_the_server_s_socket_is_private(server):
    assert os.stat(Path(server.socket_path).parent).st_mode & 0o077 == 0
    assert sys.executable in server.launcher


PACKAGES = """
import io, sys
from metaflow.packaging_sys import ContentType
from metaflow.packaging_sys.tar_backend import TarPackagingBackend
from metaflow.packaging_sys.v1 import MetaflowCodeContentV1

content = MetaflowCodeContentV1(criteria=lambda module: False)
files = list(content.contents(ContentType.CODE_CONTENT.value))
extra = (sys.argv[1], "user/extra.py")


def package(entries, creates=1):
    backend = TarPackagingBackend()
    for _ in range(creates):
        backend.create()
    for path, arcname in entries:
        if arcname.endswith("DATA"):
            backend.add_data(io.BytesIO(b"data"), arcname)
        else:
            backend.add_file(path, arcname=arcname)
    backend.close()
    return bytes(backend.get_blob())


shapes = {
    "as metaflow builds it": (files + [extra, ("", "meta/DATA")], 2),
    "starting otherwise": ([extra] + files, 1),
    "data before the end": (files[:3] + [("", "meta/DATA")] + files[3:], 1),
    "fewer files": (files[:-5], 1),
}
expected = {name: package(entries, creates) for name, (entries, creates) in shapes.items()}
from torchperf.backends.compile_server import _PackagePrefix

_PackagePrefix.install()
for name, (entries, creates) in shapes.items():
    # each shape in a fresh copy of this process, as each compile is a fresh fork
    import os

    pid = os.fork()
    if pid == 0:
        os._exit(0 if package(entries, creates) == expected[name] else 1)
    print(name, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0)
"""


def test_every_package_from_the_warmed_start_is_the_package_metaflow_builds(tmp_path):
    # GIVEN packages of several shapes: Metaflow's (its files, then the user's), and others
    # WHEN each is built first in a process that compressed Metaflow's files before
    done = subprocess.run(
        [sys.executable, "-c", PACKAGES, __file__], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    # THEN every one is byte for byte what a fresh build gives
    results = dict(line.rsplit(" ", 1) for line in done.stdout.splitlines())
    assert results == {
        "as metaflow builds it": "True",
        "starting otherwise": "True",
        "data before the end": "True",
        "fewer files": "True",
    }
