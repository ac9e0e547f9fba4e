"""The measuring step's view of its cgroup: quota, throttling and memory, on v1 and v2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from torchperf import cgroups
from torchperf.cgroups import Throttling

ROOT = Path(__file__).resolve().parents[1]


def write(folder: Path, **files: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("__", ".")).write_text(text)
    return folder


def test_v2_quota_throttling_and_memory_come_from_the_process_cgroup(tmp_path):
    # GIVEN a cgroup v2 tree where this process sits in /kubepods/pod1
    write(tmp_path, cpu__max="max 100000\n", memory__max="max\n")  # the root: no limits
    write(
        tmp_path / "kubepods" / "pod1",
        cpu__max="150000 100000\n",
        cpu__stat="usage_usec 9\nnr_periods 40\nnr_throttled 7\nthrottled_usec 250000\n",
        memory__max=str(3 * 2**30),
        memory__current=str(2**30),
    )
    text = "0::/kubepods/pod1\n"
    # THEN the pod's own files count, not the root's
    assert cgroups.cpu_quota(tmp_path, text) == 1.5
    assert cgroups.throttling(tmp_path, text) == Throttling(40, 7, 0.25)
    assert cgroups.memory_limit_bytes(tmp_path, text) == 2 * 2**30


def test_v1_files_are_read_from_the_controllers_mount(tmp_path):
    pod = tmp_path / "cpu,cpuacct" / "pod2"
    write(pod, cpu__cfs_quota_us="200000\n", cpu__cfs_period_us="100000\n",
          cpu__stat="nr_periods 10\nnr_throttled 3\nthrottled_time 1500000000\n")  # fmt: skip
    write(tmp_path / "memory" / "pod2", memory__limit_in_bytes=str(2**31),
          memory__usage_in_bytes=str(2**30))  # fmt: skip
    text = "5:memory:/pod2\n3:cpu,cpuacct:/pod2\n0::/\n"
    assert cgroups.cpu_quota(tmp_path, text) == 2.0
    assert cgroups.throttling(tmp_path, text) == Throttling(10, 3, 1.5)
    assert cgroups.memory_limit_bytes(tmp_path, text) == 2**30


def test_inside_a_container_the_mount_root_is_the_process_cgroup(tmp_path):
    # A cgroup namespace shows the pod's files at the root while /proc names the host path.
    write(tmp_path, cpu__max="100000 100000\n")
    assert cgroups.cpu_quota(tmp_path, "0::/kubepods/burstable/pod3/abc\n") == 1.0


def test_no_quota_and_no_limit_read_as_none(tmp_path):
    write(tmp_path / "cpu", cpu__cfs_quota_us="-1\n", cpu__cfs_period_us="100000\n")
    write(tmp_path / "memory", memory__limit_in_bytes=str(2**63 - 4096))
    text = "2:cpu:/\n1:memory:/\n"
    assert cgroups.cpu_quota(tmp_path, text) is None
    assert cgroups.memory_limit_bytes(tmp_path, text) is None
    assert cgroups.throttling(tmp_path / "nowhere", text) is None


def test_report_flags_throttling_and_a_quota_below_the_threads():
    before, after = Throttling(100, 1, 0.01), Throttling(150, 21, 0.81)
    report = cgroups.limits_report(2, list(range(16)), 1.5, before, after)
    assert report["usable_cpus"] == 1.5 and report["throttled"]
    assert report["throttled_periods"] == 20
    assert report["throttled_seconds"] == pytest.approx(0.8)
    assert len(report["warnings"]) == 2
    assert "1.5 CPUs, fewer than cpu=2" in report["warnings"][0]
    assert "20 of 50 CFS periods" in report["warnings"][1]
    calm = cgroups.limits_report(2, [0, 1], None, before, before)
    assert calm["warnings"] == [] and not calm["throttled"] and calm["usable_cpus"] == 2


BUSY = """
import json, sys, time
from torchperf import cgroups
before = cgroups.throttling()
end = time.monotonic() + 1.0
while time.monotonic() < end:
    pass
print(json.dumps({"quota": cgroups.cpu_quota(),
                  "during": vars(cgroups.throttling().since(before))}))
"""


@pytest.mark.skipif(
    not os.access("/sys/fs/cgroup/cpu", os.W_OK), reason="needs a writable cgroup v1 cpu controller"
)
def test_a_process_under_a_real_cfs_quota_sees_it_and_its_throttling():
    # GIVEN a real cgroup allowing 0.2 CPUs, WHEN a busy process in it reads its own cgroup
    group = Path("/sys/fs/cgroup/cpu") / f"torchperf-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text("20000")
        child = subprocess.Popen(
            [sys.executable, "-c", f"import os; open({str(group / 'cgroup.procs')!r}, 'w')"
             f".write(str(os.getpid())); exec({BUSY!r})"],
            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        out, _ = child.communicate(timeout=60)
    finally:
        group.rmdir()
    seen = json.loads(out)
    # THEN it sees the quota and was throttled in most periods of that second
    assert seen["quota"] == pytest.approx(0.2)
    assert seen["during"]["throttled_periods"] > 0
    assert seen["during"]["throttled_seconds"] > 0.3
