"""torchperf's Hydra launcher, driven by Hydra's own sweep runner (as Hydra tests its launchers),
with a fake backend: nothing starts, every call is recorded."""

import json
import math

import pytest
import yaml

from tests.test_sweep import FakeBackend
from torchperf.settings import ConfigError
from torchperf.summary import FILENAME


@pytest.fixture
def multirun(deployer_sweep, tmp_path):
    """Run ``sweep_deployer``'s config as a multirun in this process, on ``backend``: the batch
    of JobReturns, the sweep's summary and Hydra's per-job dirs (or Optuna's result)."""

    def _run(backend, *overrides):
        with deployer_sweep(backend, *overrides) as ran:
            sweep_dir = tmp_path / "sweep"
            summary = json.loads((sweep_dir / FILENAME).read_text())
            job_dirs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())
            best = sweep_dir / "optimization_results.yaml"
            best = yaml.safe_load(best.read_text()) if best.exists() else None
            return ran.returns, summary, job_dirs, best

    return _run


def test_the_launcher_receives_the_whole_grid_in_hydra_order(multirun):
    backend = FakeBackend(fail={(2, 32)})
    (batch,), summary, job_dirs, _ = multirun(backend, "cpu=1,2", "tensor_dim=32,64")
    # GIVEN one batch of four jobs: checked together, then run in Hydra's order
    assert backend.calls[:2] == [("preflight", 4), ("start", 4)]
    runs = [call[1:] for call in backend.calls if call[0] == "run"]
    assert runs == [(1, 32), (1, 64), (2, 32), (2, 64)]
    assert backend.calls[-1] == ("finish", False)
    # THEN each JobReturn carries its variant's GFLOP/s (NaN: a failed trial)
    values = [job.return_value for job in batch]
    assert values[:2] == [10.0, 10.0] and math.isnan(values[2]) and values[3] == 20.0
    assert [job.overrides for job in batch][0] == ["cpu=1", "tensor_dim=32"]
    # AND Hydra's per-job dirs and the sweep's summary are there
    assert job_dirs == ["0_cpu1_n32", "1_cpu1_n64", "2_cpu2_n32", "3_cpu2_n64"]
    assert summary["planned"] == 4 and len(summary["variants"]) == 4


def test_the_command_line_wins_over_the_presets_grid(multirun):
    backend = FakeBackend()
    (batch,), _, _, _ = multirun(backend, "sweep=smoke", "tensor_dim=48")
    assert [call[1:] for call in backend.calls if call[0] == "run"] == [(1, 48)]
    assert len(batch) == 1


def test_a_bad_job_anywhere_in_the_grid_stops_the_batch_before_anything_runs(multirun):
    backend = FakeBackend()
    with pytest.raises(ConfigError, match="tensor_dim=0 must be at least 1"):
        multirun(backend, "cpu=1", "tensor_dim=32,0")
    assert backend.calls == []


# optuna 2.10.1 (the release hydra-optuna-sweeper 1.3.0 works with) still uses SQLAlchemy 1.x names.
@pytest.mark.filterwarnings("ignore:The ``declarative_base\\(\\)`` function is now available")
def test_an_optimizing_sweepers_batches_go_through_the_launcher(multirun):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="hydra-optuna-sweeper")
    backend = FakeBackend()
    # GIVEN Optuna asking for 4 trials, 2 per batch
    _, summary, _, best = multirun(
        backend,
        "hydra/sweeper=optuna",
        "hydra.sweeper.direction=maximize",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.sampler.seed=1",
        "cpu=range(1,3)",
        "tensor_dim=choice(32,64)",
    )
    # THEN each batch was one sweep batch (started, run, finished), all under one tag
    assert [call[0] for call in backend.calls].count("start") == 2
    assert len([call for call in backend.calls if call[0] == "run"]) <= 4
    assert all(summary["tag"] in v["branch"] for v in summary["variants"])
    # AND Optuna saw the variants' figures (the fake gives cpu * 10 GFLOP/s)
    assert best["best_value"] == max(v["gflops"] for v in summary["variants"])


@pytest.mark.filterwarnings("ignore:The ``declarative_base\\(\\)`` function is now available")
def test_a_failed_trial_says_why_and_the_study_goes_on(multirun, capsys):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="hydra-optuna-sweeper")
    # GIVEN the optuna preset, and variants of n=32 that fail
    backend = FakeBackend(fail={(cpu, 32) for cpu in range(1, 65)})
    # WHEN the study runs
    _, summary, _, best = multirun(
        backend,
        "sweep=optuna",
        "hydra.sweeper.n_trials=6",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.sampler.seed=3",
        "tensor_dim=choice(32,64)",
    )
    output = "".join(capsys.readouterr())
    # THEN failed trials were Optuna's failed trials, each with its reason, and all 3 batches ran
    statuses = [v["status"] for v in summary["variants"]]
    assert "failed" in statuses, statuses
    assert "Failed experiment: cpu=" in output and "n=32 failed: boom" in output
    assert [call[0] for call in backend.calls].count("start") == 3
    # AND the best value is the best variant that succeeded
    succeeded = [v["gflops"] for v in summary["variants"] if v["status"] == "succeeded"]
    assert best["best_value"] == max(succeeded)
