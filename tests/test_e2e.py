"""Whole sweeps through `python sweep_deployer.py -m`, in a subprocess, with tiny variants."""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT, wait_for
from torchperf.plan import analytics_branch, branch_name

pytestmark = [pytest.mark.e2e, pytest.mark.flow]


def sweep_command(sweep_dir, *overrides):
    return [
        sys.executable,
        str(ROOT / "sweep_deployer.py"),
        "-m",
        *overrides,
        f"hydra.sweep.dir={sweep_dir}",
    ]


def run_sweep(sweep_dir, *overrides, timeout=600) -> subprocess.CompletedProcess:
    """``python sweep_deployer.py -m`` to its end, its output captured."""
    command = sweep_command(sweep_dir, *overrides)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def swept(sweep_dir, *overrides) -> dict:
    """A whole sweep run in ``sweep_dir``: how its process ended, the folder, its summary."""
    done = run_sweep(sweep_dir, *overrides)
    return {"done": done, "dir": sweep_dir, "summary": read_summary(sweep_dir)}


def read_summary(sweep_dir):
    return json.loads((sweep_dir / "summary.json").read_text())


def runs_tagged(tag, flow="TorchPerfFlow"):
    from metaflow import Flow, namespace

    namespace(None)
    return list(Flow(flow).runs(tag))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A sweep of four variants of which the two on CUDA fail (no GPU here)."""
    if shutil.which("nvidia-smi"):
        pytest.skip("a GPU is present: the CUDA variants would not fail")
    grid = ["cpu=1", "tensor_dim=32,48", "device=cpu,cuda", "measure_seconds=0.1"]
    return swept(tmp_path_factory.mktemp("sweep"), *grid)


def test_failed_variants_give_a_nonzero_exit_and_the_others_still_run(finished):
    assert finished["done"].returncode == 1, finished["done"].stderr
    statuses = {
        (v["tensor_dim"], v["device"] == "cuda"): v["status"]
        for v in finished["summary"]["variants"]
    }
    assert statuses == {
        (32, False): "succeeded",
        (48, False): "succeeded",
        (32, True): "failed",
        (48, True): "failed",
    }


def test_a_failed_variant_says_why_not_only_which_step_failed(finished):
    messages = [v["message"] for v in finished["summary"]["variants"] if v["status"] == "failed"]
    assert len(messages) == 2
    for message in messages:  # the step's exception, e.g. "AssertionError: Torch not compiled..."
        assert re.match(r"^\w+(Error|Exception): ", message), message


def test_summary_names_each_run_and_branch(finished):
    summary = finished["summary"]
    assert summary["backend"] == "local" and summary["planned"] == 4
    for entry in summary["variants"]:
        device = entry["device"]
        assert entry["branch"] == branch_name(
            summary["tag"], entry["cpu"], entry["tensor_dim"], device
        )
        assert entry["run"].startswith("TorchPerfFlow/")
        assert (entry["gflops"] is not None) == (entry["status"] == "succeeded")


def test_runs_carry_the_tag_and_their_branch(finished):
    summary = finished["summary"]
    runs = {run.pathspec: run for run in runs_tagged(summary["tag"])}
    for entry in summary["variants"]:
        run = runs[entry["run"]]
        assert f"project_branch:test.{entry['branch']}" in run.system_tags
        assert run.successful == (entry["status"] == "succeeded")
        if run.successful:
            assert run.data.result["gflops"] == entry["gflops"]


def test_analytics_ran_after_each_success_and_at_the_end(finished):
    summary = finished["summary"]
    analytics = runs_tagged(summary["tag"], "SweepAnalyticsFlow")
    # Two live runs (one per success) and the final one, for the failure that came last.
    assert len(analytics) == 3 and all(run.successful for run in analytics)
    final = [run for run in analytics if run.pathspec == summary["analytics_run"]]
    assert (
        final and f"project_branch:test.{analytics_branch(summary['tag'])}" in final[0].system_tags
    )
    results = final[0].data.results
    assert sorted(results["tensor_dim"]) == [32, 48]


def test_each_live_card_shows_the_variant_that_just_measured(finished):
    summary = finished["summary"]
    live = sorted(runs_tagged(summary["tag"], "SweepAnalyticsFlow"), key=lambda run: run.id)[:2]
    assert [sorted(run.data.results["tensor_dim"]) for run in live] == [[32], [32, 48]]


def test_nothing_else_of_the_sweep_ran_while_a_variant_measured(finished):
    # What may overlap a measurement: its own run, and analytics end steps (stopped meanwhile).
    tag = finished["summary"]["tag"]
    variants = runs_tagged(tag)
    analytics = runs_tagged(tag, "SweepAnalyticsFlow")
    measured = [
        (run, run.data.result["measured_from"], run.data.result["measured_until"])
        for run in variants
        if run.successful
    ]
    others = [(run, task) for run in variants for step in run for task in step] + [
        (run, run["start"].task) for run in analytics
    ]
    assert len(measured) == 2 and len(analytics) == 3
    for measuring, began, ended in measured:
        for run, task in others:
            if run.pathspec == measuring.pathspec or task.finished_at is None:
                continue
            span = task.created_at.timestamp(), task.finished_at.timestamp()
            assert span[1] <= began or span[0] >= ended, (task.pathspec, measuring.pathspec)


def test_report_lands_in_the_sweep_dir(finished):
    for name in ("report.html", "speedup.png", "efficiency.png"):
        assert (finished["dir"] / name).stat().st_size > 0


def test_terminal_shows_a_summary_table(finished):
    output = finished["done"].stdout + finished["done"].stderr
    assert "torchperf sweep" in output and "succeeded" in output and "failed" in output


def test_bad_input_is_refused_before_any_run(tmp_path):
    for override, message in [
        ("cpu=0", "cpu=0 must be at least 1"),
        (f"cpu={len(os.sched_getaffinity(0)) + 1}", "exceeds"),
        ("backend=gcp", "backend=gcp is unknown"),
        ("colour=red", "unknown setting 'colour'"),
        ("measure_seconds=0", "measure_seconds=0"),
    ]:
        done = run_sweep(tmp_path / "refused", "tensor_dim=32", override, timeout=120)
        assert done.returncode == 2, override
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert lines[-1].startswith("error: ") and message in lines[-1], done.stderr
        assert not runs_tagged_anywhere(tmp_path / "refused")


def runs_tagged_anywhere(sweep_dir):
    """Whether a refused sweep left a summary with any variant in it."""
    path = sweep_dir / "summary.json"
    return path.exists() and read_summary(sweep_dir)["variants"]


def test_interrupted_sweep_keeps_its_results_and_resumes(tmp_path):
    grid = ["cpu=1", "tensor_dim=32,40,48", "measure_seconds=1.5", "live_analytics=false"]
    first = tmp_path / "first"
    sweep = subprocess.Popen(
        sweep_command(first, *grid), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    # WHEN the first variant has succeeded, the user presses Ctrl-C
    wait_for(
        lambda: (first / "summary.json").exists() and read_summary(first)["variants"],
        120,
        "the first variant never ended",
    )
    sweep.send_signal(signal.SIGINT)
    stdout, stderr = sweep.communicate(timeout=60)
    assert sweep.returncode == 130, stderr
    summary = read_summary(first)
    statuses = [v["status"] for v in summary["variants"]]
    assert statuses[0] == "succeeded" and set(statuses[1:]) == {"cancelled"} and len(statuses) == 3
    # THEN it printed the command that resumes it: the tag and the user's grid
    lines = stdout.splitlines()
    start = lines.index("interrupted; to run what did not succeed:") + 1
    printed = shlex.split(" ".join(line.strip().removesuffix("\\") for line in lines[start:]))
    assert printed == ["python", "sweep_deployer.py", "-m", f"tag={summary['tag']}", *grid]
    # AND that command runs only the variants that did not succeed
    resumed = tmp_path / "resumed"
    done = run_sweep(resumed, *printed[3:], timeout=300)
    assert done.returncode == 0, done.stderr
    again = {v["tensor_dim"]: v for v in read_summary(resumed)["variants"]}
    assert again[32]["status"] == "skipped" and again[32]["run"] == summary["variants"][0]["run"]
    assert again[40]["status"] == again[48]["status"] == "succeeded"
    successful = [run for run in runs_tagged(summary["tag"]) if run.successful]
    assert sorted(run.data.config["tensor_dim"] for run in successful) == [32, 40, 48]
    # Without live analytics, one final analytics run; none for the interrupted sweep.
    (analytics,) = runs_tagged(summary["tag"], "SweepAnalyticsFlow")
    assert sorted(analytics.data.results["tensor_dim"]) == [32, 40, 48]


def sweep_processes(sweep_dir):
    """Processes of a sweep's runs: their command line carries the sweep dir (the turns folder)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if str(sweep_dir).encode() in cmdline.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def test_a_sweep_killed_outright_leaves_nothing_waiting(tmp_path):
    # GIVEN a sweep whose second variant has started and is ready for its turn
    sweep_dir = tmp_path / "killed"
    grid = ["cpu=1", "tensor_dim=32,48", "measure_seconds=1", "live_analytics=false"]
    sweep = subprocess.Popen(
        sweep_command(sweep_dir, *grid), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    turns = sweep_dir / ".turns"
    wait_for(
        lambda: len(list(turns.glob("*.ready"))) == 2, 120, "the second variant never got ready"
    )
    # WHEN the sweep is killed with SIGKILL (no clean-up of its own)
    sweep.kill()
    sweep.wait(timeout=10)
    # THEN its runs end by themselves: the waiting step gives up, the one before finishes
    wait_for(lambda: not sweep_processes(sweep_dir), 60, "the sweep's runs outlived it")
