"""What this process's cgroup allows: the CPU quota, its throttling, the memory limit.

Inside a Kubernetes pod ``sched_getaffinity`` lists every core of the node; what bounds a step
is its container's CFS quota (``cpu.max`` on cgroup v2, ``cpu.cfs_quota_us`` on v1), and a step
that uses more than its quota is throttled (``cpu.stat``). Both versions are read from the
process's own cgroup (``/proc/self/cgroup``); inside a container the cgroup namespace makes
that path "/", so the root of the mount is tried after it. Every reader returns None where
there is nothing to read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Throttling:
    """The cgroup's CFS counters: scheduling periods, those throttled, seconds throttled."""

    periods: int
    throttled_periods: int
    throttled_seconds: float

    def since(self, before: Throttling) -> Throttling:
        return Throttling(
            self.periods - before.periods,
            self.throttled_periods - before.throttled_periods,
            self.throttled_seconds - before.throttled_seconds,
        )


def membership(text: str) -> tuple[str | None, dict[str, str]]:
    """``/proc/self/cgroup`` as (the v2 path, {v1 controller: path})."""
    unified, controllers = None, {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, names, path = parts
        if names == "":
            unified = path
        for name in names.split(","):
            if name:
                controllers[name] = path
    return unified, controllers


def candidates(root: Path, text: str, controller: str) -> list[Path]:
    """The folders that may hold ``controller``'s files for this process, best first."""
    unified, controllers = membership(text)
    found = []
    if controller in controllers:
        path = controllers[controller].lstrip("/")
        for mount in sorted(root.glob(f"*{controller}*")):  # cpu, cpu,cpuacct, memory
            if controller in mount.name.split(","):
                found += [mount / path, mount]
    if unified is not None:
        for mount in (root, root / "unified"):
            found += [mount / unified.lstrip("/"), mount]
    return [folder for folder in dict.fromkeys(found) if folder.is_dir()]


def _read(folder: Path, name: str) -> str | None:
    try:
        return (folder / name).read_text()
    except OSError:
        return None


def _self_cgroup() -> str:
    try:
        return Path("/proc/self/cgroup").read_text()
    except OSError:
        return ""


def cpu_quota(root: Path = ROOT, text: str | None = None) -> float | None:
    """The CPUs the cgroup's CFS quota allows (2.0 for "200000 100000"), or None: no quota."""
    for folder in candidates(root, _self_cgroup() if text is None else text, "cpu"):
        v2 = _read(folder, "cpu.max")
        if v2 is not None:
            quota, period = v2.split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        v1, period = _read(folder, "cpu.cfs_quota_us"), _read(folder, "cpu.cfs_period_us")
        if v1 is not None and period is not None:
            return None if int(v1) < 0 else int(v1) / int(period)
    return None


def throttling(root: Path = ROOT, text: str | None = None) -> Throttling | None:
    """The cgroup's CFS counters now, or None where no cpu.stat can be read."""
    for folder in candidates(root, _self_cgroup() if text is None else text, "cpu"):
        stat = _read(folder, "cpu.stat")
        if stat is None:
            continue
        fields = dict(line.split() for line in stat.splitlines() if len(line.split()) == 2)
        if "throttled_usec" in fields:  # v2
            return Throttling(
                int(fields.get("nr_periods", 0)),
                int(fields.get("nr_throttled", 0)),
                int(fields["throttled_usec"]) / 1e6,
            )
        if "throttled_time" in fields:  # v1, nanoseconds
            return Throttling(
                int(fields.get("nr_periods", 0)),
                int(fields.get("nr_throttled", 0)),
                int(fields["throttled_time"]) / 1e9,
            )
    return None


def memory_limit_bytes(root: Path = ROOT, text: str | None = None) -> int | None:
    """The memory the cgroup still leaves this process (limit less usage), or None: no limit."""
    for folder in candidates(root, _self_cgroup() if text is None else text, "memory"):
        v2 = _read(folder, "memory.max")
        if v2 is not None:
            if v2.strip() == "max":
                return None
            used = _read(folder, "memory.current") or "0"
            return max(0, int(v2) - int(used))
        v1 = _read(folder, "memory.limit_in_bytes")
        if v1 is not None:
            limit = int(v1)
            if limit >= 2**60:  # v1 writes "no limit" as a huge page-rounded number
                return None
            used = _read(folder, "memory.usage_in_bytes") or "0"
            return max(0, limit - int(used))
    return None


def limits_report(
    cpu: int,
    affinity: list[int],
    quota: float | None,
    before: Throttling | None,
    after: Throttling | None,
) -> dict:
    """What the measuring step records of its cgroup, and a warning for each way the cgroup
    may have made the figure lower than ``cpu`` cores would give."""
    usable = len(affinity) if quota is None else min(len(affinity), quota)
    during = after.since(before) if before and after else None
    warnings = []
    if quota is not None and quota < cpu:
        warnings.append(f"the cgroup's CPU quota allows {quota:g} CPUs, fewer than cpu={cpu}")
    if during and during.throttled_periods:
        warnings.append(
            f"throttled: {during.throttled_periods} of {during.periods} CFS periods, "
            f"{during.throttled_seconds:.3f} s, while measuring"
        )
    return {
        "cpu_quota": quota,  # CPUs the CFS quota allows; None: no quota
        "usable_cpus": usable,  # what the process may really use: cores, bounded by the quota
        "throttled_periods": during.throttled_periods if during else None,
        "throttled_seconds": during.throttled_seconds if during else None,
        "throttled": bool(during and during.throttled_periods),
        "warnings": warnings,
    }
