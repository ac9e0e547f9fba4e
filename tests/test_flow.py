"""TorchPerfFlow, run for real (tiny sizes) once per session: its artifacts and its card."""

import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, card_text
from torchperf.plan import branch_name
from torchperf.settings import DEFAULT_VARIANT

pytestmark = pytest.mark.flow
RESULT_KEYS = {
    "gflops",
    "gflops_samples",
    "iqr_ratio",
    "noisy",
    "squarings_per_second",
    "threads",
    "tensor_dim",
    "device",
    "torch_version",
    "affinity",
    "measure_seconds",
    "gflops_ci",
    "gflops_ci_level",
    "gflops_sig_figs",
    "cpu_utilization",
    "shared",
    "warnings",
    "env",
}


@pytest.fixture(scope="module")
def runs(tiny_sweep):
    return tiny_sweep["runs"]


def test_every_run_succeeded_with_a_full_result(runs):
    for run in runs.values():
        assert run.successful
        assert set(run.data.result) >= RESULT_KEYS


def test_gflops_is_the_median_of_the_samples(runs):
    for run in runs.values():
        result = run.data.result
        assert result["gflops"] == statistics.median(result["gflops_samples"]) > 0


def test_threads_and_pinned_cores_match_cpu(runs):
    # The runs inherit this process's cores and take the lowest-numbered ones.
    allowed = sorted(os.sched_getaffinity(0))
    for (cpu, tensor_dim), run in runs.items():
        result = run.data.result
        assert result["threads"] == cpu and result["tensor_dim"] == tensor_dim
        assert result["affinity"] == allowed[:cpu]


def test_the_cgroup_view_of_the_measurement_is_recorded(runs):
    for (cpu, _), run in runs.items():
        result = run.data.result
        quota, usable = result["cpu_quota"], result["usable_cpus"]
        assert usable <= cpu and (quota is None or usable <= quota)
        periods, seconds = result["throttled_periods"], result["throttled_seconds"]
        if periods is not None:
            # The kernel throttles only a cgroup with a quota, and only in throttled periods.
            assert periods >= 0 and seconds >= 0 and (periods > 0 or seconds == 0)
            assert quota is not None or periods == 0
        throttled_warnings = [w for w in result["warnings"] if w.startswith("throttled")]
        assert bool(throttled_warnings) == result["throttled"] == bool(periods)


PERIOD_US = 100_000


def cgroup_with_quota(name: str, cpus: float) -> Path | None:
    """A new cgroup (v1 or v2) whose CFS quota is ``cpus``, made with plain file writes, or None
    where this process may not make one."""
    quota = int(cpus * PERIOD_US)
    for mount, marker, files in (
        (
            Path("/sys/fs/cgroup/cpu"),
            "cpu.cfs_quota_us",
            {"cpu.cfs_period_us": PERIOD_US, "cpu.cfs_quota_us": quota},
        ),
        (Path("/sys/fs/cgroup"), "cgroup.controllers", {"cpu.max": f"{quota} {PERIOD_US}"}),
    ):
        if not (mount / marker).exists():
            continue
        folder = mount / name
        try:
            folder.mkdir()
        except OSError:
            continue
        try:
            for file, value in files.items():
                (folder / file).write_text(str(value))
            return folder
        except OSError:
            folder.rmdir()
    return None


def remove_cgroup(folder: Path) -> None:
    """Remove the cgroup once its processes have ended (a run's last ones may linger a moment)."""
    deadline = time.monotonic() + 30
    while (folder / "cgroup.procs").read_text().strip():
        assert time.monotonic() < deadline, "the run's processes outlived it"
        time.sleep(0.05)
    folder.rmdir()


@pytest.fixture(scope="module")
def run_under_quota():
    """One TorchPerfFlow run put from here into a cgroup of its own with a CFS quota of half a
    CPU and onto the highest core this process may use: limits the flow did not choose."""
    from metaflow import Flow

    from torchperf.plan import new_sweep_tag

    tag = new_sweep_tag()
    cgroup = cgroup_with_quota(f"torchperf-test-{tag}", 0.5)
    if cgroup is None:
        pytest.skip("this process may not make a cgroup with a CPU quota")
    core = max(os.sched_getaffinity(0))

    def enter():  # in the child, before it starts the flow: it and all it starts inherit both
        (cgroup / "cgroup.procs").write_text(str(os.getpid()))
        os.sched_setaffinity(0, {core})

    try:
        done = subprocess.run(
            [
                sys.executable,
                str(ROOT / "torchtest.py"),
                "--quiet",
                "--config-value",
                "config",
                json.dumps({"cpu": 1, "tensor_dim": 64, "measure_seconds": 0.3}),
                "run",
                "--tag",
                tag,
            ],
            preexec_fn=enter,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        remove_cgroup(cgroup)
    assert done.returncode == 0, done.stderr
    (run,) = Flow("TorchPerfFlow").runs(tag)
    return {"run": run, "core": core}


def test_a_quota_set_on_the_run_is_recorded_with_its_throttling(run_under_quota):
    result = run_under_quota["run"].data.result
    # GIVEN half a CPU, and a measurement on one thread
    assert result["cpu_quota"] == 0.5 and result["usable_cpus"] == 0.5
    assert "the cgroup's CPU quota allows 0.5 CPUs, fewer than cpu=1" in result["warnings"]
    # THEN the kernel throttled it while it measured, and the result says so
    assert result["throttled"] and result["throttled_periods"] > 0
    assert result["throttled_seconds"] > 0
    assert any(w.startswith("throttled:") for w in result["warnings"])


def test_the_run_measures_on_the_core_it_was_given(run_under_quota):
    result = run_under_quota["run"].data.result
    assert result["affinity"] == [run_under_quota["core"]]
    assert result["env"]["cores"] == [run_under_quota["core"]]


def test_the_environment_fingerprint_is_recorded(runs):
    import torch

    for (cpu, _), run in runs.items():
        env = run.data.result["env"]
        assert env["torch_version"] == str(torch.__version__)
        assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        assert env["threads"] == cpu and env["cores"] == run.data.result["affinity"]
        assert env["host"] and env["blas"] and env["parallel_backend"]
        assert env["load_1min"] is None or env["load_1min"] >= 0
        assert "cpu_model" in env and "governor" in env and "image" in env


def test_contention_is_measured_and_its_warning_kept_with_the_others(runs):
    for run in runs.values():
        result = run.data.result
        assert 0 < result["cpu_utilization"] <= 1.5
        # Whether the cores were shared depends on this machine's other work; the flag and its
        # warning must agree, and the cgroup's warnings stay in the same list.
        shared_warnings = [w for w in result["warnings"] if w.startswith("shared cores")]
        assert bool(shared_warnings) == result["shared"]


def coverage(n: int, rank: int) -> float:
    """P(x_(rank) <= median <= x_(n+1-rank)) for n independent samples: the chance that between
    rank and n - rank of them fall below the median, each with probability 1/2."""
    return sum(math.comb(n, k) for k in range(rank, n - rank + 1)) / 2**n


def test_the_median_comes_with_its_confidence_interval(runs):
    for run in runs.values():
        result = run.data.result
        samples = sorted(result["gflops_samples"])
        low, high = result["gflops_ci"]
        assert low <= result["gflops"] <= high
        # GIVEN the order statistics the interval is made of, symmetric about the median
        rank = samples.index(low) + 1
        assert high == samples[len(samples) - rank]
        # THEN its stated level is their coverage: the narrowest pair that reaches 95 %, or
        # [min, max] where no pair does (below 6 samples)
        n = len(samples)
        assert result["gflops_ci_level"] == pytest.approx(coverage(n, rank))
        if n >= 6:
            assert coverage(n, rank) >= 0.95 > coverage(n, rank + 1)
        else:
            assert (low, high) == (samples[0], samples[-1])


def test_measuring_lasts_at_least_the_budget(runs):
    for run in runs.values():
        assert run.data.result["measure_seconds"] >= run.data.config["measure_seconds"]


def test_config_is_stored_completed_with_defaults(runs):
    for (cpu, tensor_dim), run in runs.items():
        config = dict(run.data.config)
        assert set(config) == set(DEFAULT_VARIANT)
        assert (config["cpu"], config["tensor_dim"]) == (cpu, tensor_dim)


def test_runs_carry_the_sweep_tag_and_their_own_branch(tiny_sweep):
    for (cpu, tensor_dim), run in tiny_sweep["runs"].items():
        assert tiny_sweep["tag"] in run.tags
        branch = branch_name(tiny_sweep["tag"], cpu, tensor_dim)
        assert f"project_branch:test.{branch}" in run.system_tags
        assert "project:torchperf" in run.system_tags


def test_the_matrix_is_not_stored(runs):
    for run in runs.values():
        for step in run:
            assert {artifact.id for artifact in step.task} <= {"name", "config", "result"}


def test_the_card_shows_the_result(runs):
    from metaflow.cards import get_cards

    for run in runs.values():
        (card,) = get_cards(run["start"].task, id="benchmark")
        text = card_text(card.get())
        assert "GFLOP/s" in text and f"{run.data.result['gflops']:.2f}" in text
        assert "IQR / median" in text
        # The core list reads as ids, not as a count of cores.
        assert f'"pinned cores (ids)", "{", ".join(map(str, run.data.result["affinity"]))}"' in text
        assert "warming up" not in text  # the final render replaced the phase
        assert "% CI" in text and "Environment" in text
        assert run.data.result["env"]["torch_version"] in text


def test_runs_with_no_arguments():
    # The documented first step: the defaults measure n=1024 on one core.
    done = subprocess.run(
        [sys.executable, str(ROOT / "torchtest.py"), "--quiet", "run"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    # The figure with its interval, as every other place shows it.
    output = done.stdout + done.stderr
    assert re.search(r"GFLOP/s \(\d+ % CI [\d.]+–[\d.]+\) at cpu=1, n=1024", output)


def test_bad_config_fails_in_one_line_before_measuring():
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "torchtest.py"),
            "--config-value",
            "config",
            '{"cpu": 0}',
            "run",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "cpu=0 must be at least 1" in done.stderr
