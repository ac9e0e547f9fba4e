"""A "pod": one local process tree standing in for one container, as faithfully as root allows.

Each pod gets
- its own folder (the container's working directory is ``<folder>/workspace``, its HOME
  ``<folder>/home``) and only the environment its container spec gives it, plus what a container
  runtime adds (PATH of the image, HOSTNAME);
- a private mount namespace (``unshare -m``) with a fresh tmpfs on ``/tmp`` and on ``/mnt``, and
  each of the container's volume mounts under ``/mnt`` (``/mnt/out`` for Metaflow's outputs)
  bound to a folder of the pod, so that concurrent pods never share ``/tmp/mf-input-paths`` or
  ``/mnt/out/task_id`` and the executor reads output parameters from the pod's own folder;
- a cgroup v1 ``cpu`` group with a CFS quota equal to the container's CPU limit (else its
  request), bound over ``/sys/fs/cgroup/cpu`` inside the pod as a container runtime does on
  cgroup v1, so the pod reads its own quota and ``cpu.stat``. Where the cgroup cannot be made the
  pod runs without it and ``Pod.cgroup`` is None (``cgroup_problem`` says why);
- its own process group; ``kill`` signals the group and every process of its cgroup.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
CGROUP_CPUACCT = Path("/sys/fs/cgroup/cpuacct")  # a separate v1 hierarchy here: CPU time used
PERIOD_US = 100_000
MOUNTABLE = ("/mnt/", "/dev/shm")  # volume mount paths a pod can have here


def cpu_quantity(text) -> float | None:
    """Kubernetes CPU quantity ("2", "2.0", "500m") in cores."""
    if text is None or text == "":
        return None
    text = str(text)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def cpu_limit(container: dict) -> float | None:
    """What the kubelet turns into a CFS quota: the limit; a request alone where none is set.

    (Kubernetes gives a container without a limit no quota at all; here a request alone still
    bounds the pod, since this machine has no other way to keep two pods off each other's cores.)
    """
    resources = container.get("resources") or {}
    for field in ("limits", "requests"):
        cores = cpu_quantity((resources.get(field) or {}).get("cpu"))
        if cores:
            return cores
    return None


def pods_unsupported() -> str | None:
    """Why pods cannot run on this machine (None when they can): they need a mount namespace."""
    try:
        done = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "true"], capture_output=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unshare is not usable: {error}"
    if done.returncode:
        return f"unshare -m failed: {done.stderr.decode().strip()[:200]} (pods need root)"
    return None


class CgroupUnavailable(RuntimeError):
    pass


def make_cgroup(parent: str, name: str, cores: float | None) -> Path:
    """A cpu cgroup under ``/sys/fs/cgroup/cpu/<parent>/<name>`` with the quota set."""
    if not (CGROUP_CPU / "cgroup.procs").exists():
        raise CgroupUnavailable(f"{CGROUP_CPU} is not a cgroup v1 cpu hierarchy")
    path = CGROUP_CPU / parent / name
    try:
        path.mkdir(parents=True, exist_ok=True)
        (path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        quota = int(cores * PERIOD_US) if cores else -1
        (path / "cpu.cfs_quota_us").write_text(str(quota))
    except OSError as error:
        raise CgroupUnavailable(f"cannot set up {path}: {error}") from None
    return path


def make_cpuacct(parent: str, name: str) -> Path | None:
    """A cpuacct group beside the cpu one (None where the hierarchy is absent or joint)."""
    if CGROUP_CPUACCT.resolve() == CGROUP_CPU.resolve() or not CGROUP_CPUACCT.is_dir():
        return None
    path = CGROUP_CPUACCT / parent / name
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return path


def remove_cgroup(path: Path | None) -> None:
    """rmdir a pod's cgroup once its processes are gone (and the parent when it is empty)."""
    if path is None:
        return
    for _ in range(50):
        try:
            path.rmdir()
            break
        except FileNotFoundError:
            break
        except OSError:  # busy: a process still exits
            time.sleep(0.1)
    with contextlib.suppress(OSError):
        path.parent.rmdir()


def cgroup_stat(path: Path) -> dict[str, int]:
    lines = (path / "cpu.stat").read_text().split("\n")
    return {k: int(v) for k, v in (line.split() for line in lines if line.strip())}


def _wrapper(
    pod_dir: Path, mounts: list[tuple[str, Path]], cgroup: Path | None, cpuacct: Path | None
) -> str:
    """The shell that enters the pod: cgroup, private mounts, working directory, then exec."""
    steps = []
    for group in (cgroup, cpuacct):
        if group is not None:
            steps.append(f"echo $$ > {shlex.quote(str(group / 'cgroup.procs'))}")
    inner = ["mount -t tmpfs -o mode=1777 tmpfs /tmp", "mount -t tmpfs tmpfs /mnt"]
    for mount_path, source in mounts:
        if mount_path.startswith("/mnt/"):
            inner.append(f"mkdir -p {shlex.quote(mount_path)}")
            inner.append(f"mount --bind {shlex.quote(str(source))} {shlex.quote(mount_path)}")
        else:  # /dev/shm: a pod's own memory-backed emptyDir
            inner.append(f"mount -t tmpfs tmpfs {shlex.quote(mount_path)}")
    if cgroup is not None:
        inner.append(f"mount --bind {shlex.quote(str(cgroup))} {CGROUP_CPU}")
    inner.append(f"cd {shlex.quote(str(pod_dir / 'workspace'))}")
    inner.append('exec "$@"')
    enter = (
        "exec unshare -m --propagation private sh -c "
        + shlex.quote(" && ".join(inner))
        + ' pod "$@"'
    )
    steps.append(enter)
    return "; ".join(steps)


class Pod:
    """One container's process; ``start`` then ``wait``/``poll``; ``kill`` stops all of it."""

    def __init__(
        self,
        name: str,
        folder: Path,
        argv: list[str],
        env: dict[str, str],
        *,
        volume_mounts: list[dict] | None = None,
        cores: float | None = None,
        cgroup_parent: str = "torchperf-sim",
        use_cgroup: bool = True,
    ):
        self.name = name
        self.folder = Path(folder)
        self.argv = argv
        self.env = env
        self.cores = cores
        self.cgroup: Path | None = None
        self.cpuacct: Path | None = None
        self.cgroup_problem: str | None = None
        self.cgroup_stat: dict[str, int] | None = None  # cpu.stat at the end
        self.cpu_seconds: float | None = None  # user + system CPU of the whole pod
        self.started = self.ended = None
        self.mounts: list[tuple[str, Path]] = []
        for mount in volume_mounts or []:
            path = mount["mountPath"]
            if not path.startswith(MOUNTABLE):
                raise ValueError(f"the simulated cluster cannot mount {path}")
            source = self.folder / "volumes" / mount["name"]
            self.mounts.append((path, source))
        self._use_cgroup = use_cgroup
        self._cgroup_parent = cgroup_parent
        self.process: subprocess.Popen | None = None

    def host_path(self, path: str) -> Path | None:
        """Where a path of the container (under a volume mount) lies on this machine."""
        for mount_path, source in self.mounts:
            prefix = mount_path.rstrip("/") + "/"
            if path.startswith(prefix):
                return source / path[len(prefix) :]
        return None

    def start(self) -> None:
        for sub in ("workspace", "home"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        for _, source in self.mounts:
            source.mkdir(parents=True, exist_ok=True)
        if self._use_cgroup:
            try:
                self.cgroup = make_cgroup(self._cgroup_parent, self.name, self.cores)
                self.cpuacct = make_cpuacct(self._cgroup_parent, self.name)
            except CgroupUnavailable as error:
                self.cgroup_problem = str(error)
        else:
            self.cgroup_problem = "cgroups disabled for this cluster"
        script = _wrapper(self.folder, self.mounts, self.cgroup, self.cpuacct)
        self.log = open(self.folder / "pod.log", "wb")  # noqa: SIM115 - closed in wait()
        self.started = time.monotonic()
        self._times = os.times()
        self.process = subprocess.Popen(
            ["sh", "-c", script, "pod", *self.argv],
            env=self.env,
            cwd=self.folder,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def poll(self) -> int | None:
        return self.process.poll() if self.process else None

    def pids(self) -> list[int]:
        """Every process of the pod (its cgroup where it has one, else its process group)."""
        if self.cgroup is not None and (self.cgroup / "cgroup.procs").exists():
            text = (self.cgroup / "cgroup.procs").read_text()
            return [int(pid) for pid in text.split()]
        return [self.process.pid] if self.process and self.process.poll() is None else []

    def kill(self, grace_seconds: float = 2.0) -> None:
        """SIGTERM to the pod's processes, SIGKILL to what is left after the grace period."""
        if self.process is None:
            return
        for sig, wait in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and (self.process.poll() is None or self.pids()):
                time.sleep(0.05)
            if self.process.poll() is not None and not self.pids():
                return

    def wait(self) -> int:
        code = self.process.wait()
        # Children that outlive the main process (a container ends when its first process does).
        if self.pids():
            self.kill(grace_seconds=0.5)
        self.ended = time.monotonic()
        if self.cgroup is not None:
            try:
                self.cgroup_stat = cgroup_stat(self.cgroup)
                if self.cpuacct is not None:
                    usage = int((self.cpuacct / "cpuacct.usage").read_text())
                    self.cpu_seconds = usage / 1e9
            except OSError:
                pass
        self.log.close()
        remove_cgroup(self.cgroup)
        remove_cgroup(self.cpuacct)
        return code

    @property
    def wall_seconds(self) -> float | None:
        if self.started is None or self.ended is None:
            return None
        return self.ended - self.started
