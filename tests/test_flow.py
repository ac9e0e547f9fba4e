"""TorchPerfFlow, run for real (tiny sizes) once per session: its artifacts and its card."""

import os
import re
import statistics
import subprocess
import sys

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
    for (cpu, tensor_dim), run in runs.items():
        result = run.data.result
        assert result["threads"] == cpu and result["tensor_dim"] == tensor_dim
        assert len(set(result["affinity"])) == cpu
        assert set(result["affinity"]) <= os.sched_getaffinity(0)


def test_the_cgroup_view_of_the_measurement_is_recorded(runs):
    from torchperf import cgroups

    # This machine's own cgroup, read the same way the step read it.
    quota = cgroups.cpu_quota()
    for (cpu, _), run in runs.items():
        result = run.data.result
        assert result["cpu_quota"] == quota
        expected = len(result["affinity"]) if quota is None else min(cpu, quota)
        assert result["usable_cpus"] == expected
        assert isinstance(result["warnings"], list)
        assert result["throttled"] == bool(result["throttled_periods"])


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


def test_the_median_comes_with_its_confidence_interval(runs):
    from torchperf import stats

    for run in runs.values():
        result = run.data.result
        low, high = result["gflops_ci"]
        assert low <= result["gflops"] <= high
        interval = stats.median_ci(result["gflops_samples"])
        assert (low, high) == (interval.low, interval.high)


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
