"""The sweep logic with a fake backend: nothing starts, everything is recorded."""

import json
import math
import os
import time

import pytest

from torchperf import sweep as sweep_module
from torchperf.backends.base import Outcome
from torchperf.backends.local import LocalBackend
from torchperf.history import Done
from torchperf.plan import branch_name
from torchperf.settings import ConfigError, usable_cores
from torchperf.summary import FILENAME
from torchperf.sweep import Sweep


class FakeBackend:
    """Records every call; variants listed in ``fail`` fail, the others yield cpu * 10 GFLOP/s."""

    def __init__(self, fail=(), preflight_error=None):
        self.calls = []
        self.fail = set(fail)
        self.preflight_error = preflight_error

    def preflight(self, spec):
        self.calls.append(("preflight", len(spec.planned)))
        if self.preflight_error:
            raise ConfigError(self.preflight_error)

    def start(self, spec):
        self.calls.append(("start", len(spec.pending)))

    def run_variant(self, spec, variant, settings):
        self.calls.append(("run", variant.cpu, variant.tensor_dim))
        if (variant.cpu, variant.tensor_dim) in self.fail:
            return Outcome("failed", f"TorchPerfFlow/{len(self.calls)}", message="boom")
        return Outcome("succeeded", f"TorchPerfFlow/{len(self.calls)}", 10.0 * variant.cpu)

    def cancel(self):
        self.calls.append(("cancel",))

    def finish(self, spec, interrupted):
        self.calls.append(("finish", interrupted))
        return None if interrupted else "SweepAnalyticsFlow/1"


JOBS = [{"cpu": 1, "tensor_dim": 32}, {"cpu": 1, "tensor_dim": 64}, {"cpu": 2, "tensor_dim": 32}]


@pytest.fixture
def open_sweep(compose_config, tmp_path):
    def _open(backend, *overrides, jobs=JOBS):
        config = compose_config(*overrides)
        return Sweep.open(config, jobs, tmp_path, backend=backend, display=False)

    yield _open


def summary(tmp_path):
    return json.loads((tmp_path / FILENAME).read_text())


def test_a_failing_variant_does_not_stop_the_others(open_sweep, tmp_path):
    backend = FakeBackend(fail={(1, 64)})
    sweep = open_sweep(backend)
    returned = [sweep.run_job(job) for job in JOBS]
    assert returned[0] == 10.0 and math.isnan(returned[1]) and returned[2] == 20.0
    assert sweep.close() == 1
    statuses = [v["status"] for v in summary(tmp_path)["variants"]]
    assert statuses == ["succeeded", "failed", "succeeded"]
    assert summary(tmp_path)["analytics_run"] == "SweepAnalyticsFlow/1"


def test_summary_is_written_as_the_sweep_goes(open_sweep, tmp_path):
    sweep = open_sweep(FakeBackend())
    assert summary(tmp_path)["variants"] == []
    sweep.run_job(JOBS[0])
    (entry,) = summary(tmp_path)["variants"]
    assert entry["branch"] == branch_name(sweep.spec.tag, 1, 32)
    assert entry["run"] and entry["gflops"] == 10.0
    assert set(entry) >= {"cpu", "tensor_dim", "device", "branch", "status", "run", "gflops"}
    assert sweep.close() == 0


def test_a_cpu_and_a_cuda_variant_of_one_size_are_recorded_apart(open_sweep, tmp_path):
    jobs = [
        {"cpu": 1, "tensor_dim": 32, "device": "cpu"},
        {"cpu": 1, "tensor_dim": 32, "device": "cuda"},
    ]
    sweep = open_sweep(FakeBackend(), jobs=jobs)
    for job in jobs:
        sweep.run_job(job)
    entries = summary(tmp_path)["variants"]
    assert sorted(entry["device"] for entry in entries) == ["cpu", "cuda"]
    assert len({entry["branch"] for entry in entries}) == 2


def test_preflight_failure_runs_nothing(open_sweep, tmp_path):
    backend = FakeBackend(preflight_error="cpu=9 exceeds the 2 cores usable here")
    with pytest.raises(ConfigError, match="cpu=9"):
        open_sweep(backend)
    assert backend.calls == [("preflight", 3)]


def test_the_backend_starts_once_everything_is_checked(open_sweep):
    backend = FakeBackend()
    open_sweep(backend)
    assert backend.calls == [("preflight", 3), ("start", 3)]


def test_a_sweep_closed_as_interrupted_stops_the_backend_and_records_the_rest(open_sweep, tmp_path):
    # GIVEN a sweep whose Hydra run failed before its second job
    backend = FakeBackend()
    opened = open_sweep(backend)
    opened.run_job(JOBS[0])
    # WHEN the launcher closes it as interrupted
    assert opened.close(interrupted=True) == 130
    # THEN what the backend started is stopped and the summary tells what ran
    assert backend.calls[-2:] == [("cancel",), ("finish", True)]
    statuses = [v["status"] for v in summary(tmp_path)["variants"]]
    assert statuses == ["succeeded", "cancelled", "cancelled"]
    opened.close(interrupted=True)  # a closed sweep is left alone
    assert backend.calls[-1] == ("finish", True) and len(backend.calls) == 5


def test_bad_value_anywhere_in_the_grid_is_refused_before_anything_runs(open_sweep):
    backend = FakeBackend()
    with pytest.raises(ConfigError, match="tensor_dim=0"):
        open_sweep(backend, jobs=[*JOBS, {"cpu": 1, "tensor_dim": 0}])
    assert backend.calls == []


def test_duplicate_variants_are_refused(open_sweep):
    with pytest.raises(ConfigError, match="twice"):
        open_sweep(FakeBackend(), jobs=[JOBS[0], JOBS[0]])


def test_interrupt_cancels_the_rest_and_keeps_what_succeeded(open_sweep, tmp_path):
    backend = FakeBackend()
    sweep = open_sweep(backend)
    sweep.run_job(JOBS[0])
    assert sweep.close(interrupted=True) == 130
    assert ("cancel",) in backend.calls and ("finish", True) in backend.calls
    statuses = [(v["cpu"], v["tensor_dim"], v["status"]) for v in summary(tmp_path)["variants"]]
    assert statuses == [(1, 32, "succeeded"), (1, 64, "cancelled"), (2, 32, "cancelled")]


def test_dry_run_runs_nothing(open_sweep, tmp_path):
    backend = FakeBackend()
    sweep = open_sweep(backend, "dry_run=true")
    assert all(math.isnan(sweep.run_job(job)) for job in JOBS)
    assert not [call for call in backend.calls if call[0] == "run"]
    assert {v["status"] for v in summary(tmp_path)["variants"]} == {"skipped"}


def test_resume_runs_only_what_did_not_succeed(open_sweep, tmp_path, monkeypatch):
    tag = "sweep_20260101_000000_abcdef"
    earlier = {branch_name(tag, 1, 32): Done("TorchPerfFlow/7", 99.0)}
    monkeypatch.setattr(sweep_module, "succeeded_variants", lambda t: earlier if t == tag else {})
    monkeypatch.setattr(sweep_module, "runs_tagged", lambda t: len(earlier) if t == tag else 0)
    backend = FakeBackend()
    sweep = open_sweep(backend, f"tag={tag}")
    assert [sweep.run_job(job) for job in JOBS] == [99.0, 10.0, 20.0]
    assert ("run", 1, 32) not in backend.calls
    first = summary(tmp_path)["variants"][0]
    assert (first["status"], first["run"], first["gflops"]) == ("skipped", "TorchPerfFlow/7", 99.0)
    assert sweep.close() == 0


def test_optimizer_sweepers_get_nan_for_invalid_values(open_sweep):
    sweep = open_sweep(FakeBackend(), jobs=None)
    assert math.isnan(sweep.run_job({"cpu": 0, "tensor_dim": 32}))


def test_local_backend_refuses_cpu_above_usable_cores(open_sweep):
    cores = len(usable_cores())
    with pytest.raises(ConfigError, match=f"cpu={cores + 1} exceeds"):
        open_sweep(LocalBackend(), jobs=[{"cpu": cores + 1, "tensor_dim": 32}])


def processes_with(text):
    """Processes whose command line holds ``text``: a sweep's runtimes carry its sweep dir (the
    turns folder), a run's steps carry ``--run-id ID``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if text.encode() in cmdline.read().replace(b"\0", b" "):
                    found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.mark.flow
def test_the_first_variant_starts_with_the_sweep_and_stops_with_it(open_sweep, tmp_path):
    # GIVEN a local sweep just opened, its jobs still to come from Hydra
    sweep = open_sweep(LocalBackend(), "measure_seconds=0.1")
    # THEN its first variant's run is already starting
    assert processes_with(str(tmp_path))
    # WHEN Hydra fails before the first job and the launcher closes the sweep
    sweep.close(interrupted=True)
    # THEN nothing of it runs on, and the summary says so
    assert not processes_with(str(tmp_path))
    assert {v["status"] for v in summary(tmp_path)["variants"]} == {"cancelled"}


@pytest.mark.flow
def test_a_variant_whose_turn_runs_past_its_timeout_is_stopped(open_sweep, tmp_path, capfd):
    # GIVEN a variant that measures longer than its timeout allows
    jobs = [{"cpu": 1, "tensor_dim": 32}]
    sweep = open_sweep(LocalBackend(), "measure_seconds=30", "variant_timeout_seconds=6", jobs=jobs)
    began = time.monotonic()
    assert math.isnan(sweep.run_job(jobs[0]))
    # THEN it is stopped soon after its timeout, recorded as such, and leaves no process behind
    assert time.monotonic() - began < 30
    (entry,) = summary(tmp_path)["variants"]
    assert entry["status"] == "timeout" and "6 s" in entry["message"]
    run_id = entry["run"].split("/")[1]
    assert not processes_with(str(tmp_path)) and not processes_with(f"--run-id {run_id}")
    sweep.close()
    # AND stopping it printed nothing into the terminal (no "kill: (PID): No such process")
    printed = capfd.readouterr()
    assert "No such process" not in printed.out + printed.err


def test_a_tag_no_run_carries_is_refused_unless_new_on_purpose(open_sweep, tmp_path):
    # GIVEN a tag no run carries (this test session's datastore)
    tag = "sweep_20260101_000000_000000"
    with pytest.raises(ConfigError, match=f"tag={tag} names no earlier sweep"):
        open_sweep(FakeBackend(), f"tag={tag}")
    sweep = open_sweep(FakeBackend(), f"tag={tag}", "new_tag=true")
    assert sweep.spec.tag == tag and sweep.done == {}
    sweep.close()


def test_a_new_tag_that_runs_carry_already_is_refused(open_sweep, monkeypatch):
    monkeypatch.setattr(sweep_module, "runs_tagged", lambda t: 2)
    with pytest.raises(ConfigError, match="already names a sweep .2 runs.: drop new_tag=true"):
        open_sweep(FakeBackend(), "tag=sweep_x", "new_tag=true")


@pytest.mark.parametrize("seconds", ["0", "-1"])
def test_a_variant_timeout_must_be_above_zero(open_sweep, seconds):
    backend = FakeBackend()
    with pytest.raises(ConfigError, match=f"variant_timeout_seconds={seconds} must be above 0"):
        open_sweep(backend, f"variant_timeout_seconds={seconds}")
    assert backend.calls == []


def test_sweepers_that_count_failed_trials_get_the_reason_raised(open_sweep):
    sweep = open_sweep(FakeBackend(fail={(1, 64)}))
    with pytest.raises(sweep_module.FailedTrial, match="cpu=1 n=64 failed: boom"):
        sweep.run_job(JOBS[1], raising=True)
    with pytest.raises(sweep_module.FailedTrial, match="cpu=0 must be at least 1"):
        sweep.run_job({"cpu": 0, "tensor_dim": 32}, raising=True)
    sweep.close()
