"""The sweep aggregation as pure functions: rows, derived metrics, table, incremental merge."""

from __future__ import annotations

import itertools
import math

import pytest

from torchperf import analytics
from torchperf.plan import event_name
from torchperf.result import Result
from torchperf.settings import ConfigError


def make_result(gflops: float, samples=None, **fields) -> dict:
    """A result artifact as the flow stores it (torchperf/result.py), with made-up figures."""
    samples = list(samples or [gflops] * 5)
    iqr_ratio = fields.pop("iqr_ratio", 0.01)
    figures = {"gflops": gflops, "gflops_samples": samples, "gflops_q1": gflops}
    figures |= {"gflops_q3": gflops, "iqr_ratio": iqr_ratio, "noisy": iqr_ratio > 0.05}
    figures |= {"squarings_per_second": 1.0, "calls_per_sample": 1, "threads": 1}
    figures |= {"tensor_dim": 64, "device": "cpu", "torch_version": "2.13.0"}
    figures |= {"measure_seconds": 1.0, "warmup_seconds": 0.1, "warmup_settled": True}
    return Result.from_dict({**figures, **fields}).to_dict()


def make_row(cpu: int, tensor_dim: int, gflops: float, *, run: str | None = None, **extra):
    """A row as row_from_run builds it from a run's config and result."""
    config = {"cpu": cpu, "tensor_dim": tensor_dim, "device": extra.pop("device", "cpu")}
    iqr_ratio = extra.pop("iqr_ratio", 0.01)
    result = make_result(gflops, iqr_ratio=iqr_ratio, noisy=extra.pop("noisy", iqr_ratio > 0.05))
    pathspec = run or f"TorchPerfFlow/{cpu}{tensor_dim}"
    return analytics.row_from_run(pathspec, config, result, extra.pop("created_at", "2025-01-01"))


SWEEP = [
    make_row(1, 256, 100.0),
    make_row(2, 256, 180.0),
    make_row(4, 256, 300.0),
    make_row(1, 512, 110.0),
    make_row(2, 512, 210.0, iqr_ratio=0.2),
]


def by_variant(rows):
    return {(row["cpu"], row["tensor_dim"]): row for row in rows}


def test_speedup_is_against_the_same_tensor_dim_at_the_smallest_cpu():
    derived = by_variant(analytics.derive(SWEEP))
    for (_, dim), row in derived.items():
        base = derived[(1, dim)]["gflops"]
        assert row["speedup"] == pytest.approx(row["gflops"] / base)
    assert derived[(1, 256)]["speedup"] == 1.0


def test_efficiency_divides_speedup_by_the_cpu_ratio():
    derived = by_variant(analytics.derive(SWEEP))
    for (cpu, _), row in derived.items():
        assert row["efficiency"] == pytest.approx(row["speedup"] / cpu)


def test_smallest_cpu_need_not_be_one():
    rows = [make_row(2, 64, 50.0), make_row(4, 64, 80.0), make_row(8, 64, 120.0)]
    derived = by_variant(analytics.derive(rows))
    assert derived[(8, 64)]["speedup"] == pytest.approx(120.0 / 50.0)
    assert derived[(8, 64)]["efficiency"] == pytest.approx(120.0 / 50.0 / (8 / 2))


def test_missing_baseline_gives_nan_not_an_error():
    rows = [make_row(1, 64, 10.0), make_row(2, 128, 30.0)]
    derived = by_variant(analytics.derive(rows))
    assert math.isnan(derived[(2, 128)]["speedup"])
    assert math.isnan(derived[(2, 128)]["efficiency"])


def test_noisy_flag_and_iqr_ratio_are_carried():
    derived = by_variant(analytics.derive(SWEEP))
    assert derived[(2, 512)]["noisy"] and derived[(2, 512)]["iqr_ratio"] == 0.2
    assert not derived[(1, 256)]["noisy"]


def test_table_is_cpu_by_tensor_dim_with_gaps_as_none():
    cpus, dims, cells = analytics.gflops_table(SWEEP)
    assert cpus == [1, 2, 4] and dims == [(256, "cpu"), (512, "cpu")]
    assert [len(line) for line in cells] == [len(dims)] * len(cpus)
    assert cells[cpus.index(2)][dims.index((512, "cpu"))] == 210.0
    assert cells[cpus.index(4)][dims.index((512, "cpu"))] is None


MIXED = [
    make_row(1, 256, 100.0, run="TorchPerfFlow/1"),
    make_row(2, 256, 180.0, run="TorchPerfFlow/2"),
    make_row(1, 256, 9000.0, run="TorchPerfFlow/3", device="cuda"),
    make_row(2, 256, 9100.0, run="TorchPerfFlow/4", device="cuda"),
]


def test_the_same_cpu_and_size_on_two_devices_are_two_variants():
    kept = analytics.latest_per_variant(MIXED)
    assert sorted(analytics.cell(row) for row in kept) == sorted(
        [(1, 256, "cpu"), (2, 256, "cpu"), (1, 256, "cuda"), (2, 256, "cuda")]
    )


def test_speedup_is_against_the_same_device():
    derived = {analytics.cell(row): row for row in analytics.derive(MIXED)}
    assert derived[(2, 256, "cpu")]["speedup"] == pytest.approx(180.0 / 100.0)
    assert derived[(2, 256, "cuda")]["speedup"] == pytest.approx(9100.0 / 9000.0)


def test_each_device_is_its_own_column_of_the_table():
    _, columns, cells = analytics.gflops_table(MIXED)
    assert columns == [(256, "cpu"), (256, "cuda")]
    assert cells[0] == [100.0, 9000.0]


def test_rows_of_runs_from_before_devices_count_as_cpu():
    row = make_row(1, 64, 10.0)
    del row["device"]
    assert analytics.cell(row) == (1, 64, "cpu")


def test_repeated_trigger_does_not_double_count():
    # GIVEN an aggregate that already holds every run
    seen = analytics.merge_rows({}, SWEEP)
    # WHEN the same runs are delivered again, plus one new run
    new = make_row(4, 512, 320.0)
    merged = analytics.merge_rows(seen, [*SWEEP, new])
    # THEN each run counts once
    assert len(merged) == len(SWEEP) + 1
    assert len(analytics.derive(merged.values())) == len(SWEEP) + 1


def test_a_variant_run_again_counts_once_with_its_newest_run():
    old = make_row(2, 256, 150.0, run="TorchPerfFlow/1", created_at="2025-01-01T10:00")
    rerun = make_row(2, 256, 190.0, run="TorchPerfFlow/2", created_at="2025-01-01T11:00")
    merged = analytics.merge_rows({}, [rerun, old])
    assert len(merged) == 2
    (kept,) = analytics.latest_per_variant(merged.values())
    assert kept["run"] == "TorchPerfFlow/2"


def test_results_frame_has_the_documented_columns():
    frame = analytics.to_frame(analytics.derive(SWEEP))
    required = {"cpu", "tensor_dim", "gflops", "iqr_ratio", "speedup", "efficiency", "noisy", "run"}
    assert required <= set(frame.columns)
    assert len(frame) == len(SWEEP)
    assert analytics.to_frame([]).columns.tolist() == list(analytics.COLUMNS)


def test_progress_line_names_planned_and_each_way_of_ending_without_a_result():
    nothing = analytics.ended_counts([])
    failed = analytics.ended_counts([{"status": "failed"}])
    assert (
        analytics.progress_line("s", 3, failed, 6) == "Sweep `s`: 3 of 6 variants done (1 failed)"
    )
    assert "of" not in analytics.progress_line("s", 3, nothing, None)
    # A sweep whose variants all timed out does not read as "0 failed".
    timed_out = analytics.ended_counts([{"status": "timeout"}, {"status": "timeout"}])
    assert (
        analytics.progress_line("s", 0, timed_out, 2)
        == "Sweep `s`: 0 of 2 variants done (2 timed out)"
    )
    both = analytics.ended_counts([{"status": "cancelled"}, {"status": "failed"}])
    assert analytics.progress_line("s", 1, both, 3).endswith("(1 failed, 1 cancelled)")


def test_the_sweeps_mark_on_a_run_gives_its_variant_status_and_reason():
    tag = analytics.ended_tag(2, 64, "cpu", "timeout", "stopped after 30 s: at 0:30")
    assert analytics.ended_mark(["sweep_x", tag]) == {
        "cpu": 2,
        "tensor_dim": 64,
        "device": "cpu",
        "status": "timeout",
        "reason": "stopped after 30 s: at 0:30",
    }
    assert analytics.ended_mark(["sweep_x"]) is None
    # Metaflow refuses tags over 500 characters: a long reason is cut.
    assert len(analytics.ended_tag(1, 32, "cuda", "failed", "x" * 1000)) < 500


def test_config_derives_the_event_from_the_tag():
    config = analytics.analytics_config({"tag": "sweep_x", "planned": 4})
    assert config["event"] == event_name("sweep_x")
    assert config["planned"] == 4
    assert analytics.analytics_config({"tag": "t", "event": "custom"})["event"] == "custom"


def test_missing_tag_is_one_line_error():
    with pytest.raises(ConfigError, match="config.tag is required") as error:
        analytics.require_tag(analytics.analytics_config(None))
    assert "\n" not in str(error.value)


def test_unknown_config_key_is_rejected():
    with pytest.raises(ConfigError, match="unknown setting 'tags'"):
        analytics.analytics_config({"tags": "x"})


class FakeTask:
    def __init__(self, attempt_ok=None):
        self.metadata_dict = {} if attempt_ok is None else {"attempt_ok": attempt_ok}


class FakeRun:
    """Enough of metaflow.Run for run_status: steps are lists of tasks."""

    def __init__(self, successful=False, attempts=()):
        self.successful = successful
        self._steps = [[FakeTask(ok) for ok in attempts]]

    def __iter__(self):
        return iter(self._steps)


def test_run_status_tells_running_from_failed():
    assert analytics.run_status(FakeRun(successful=True)) == analytics.SUCCESSFUL
    assert analytics.run_status(FakeRun(attempts=["False"])) == analytics.FAILED
    # Still running: no task has finished, or the finished ones succeeded.
    assert analytics.run_status(FakeRun(attempts=[None])) == analytics.RUNNING
    assert analytics.run_status(FakeRun(attempts=["True", None])) == analytics.RUNNING


class TaggedRun:
    def __init__(self, *system_tags):
        self.system_tags = frozenset(system_tags)


def test_on_branch_reads_the_project_branch_whatever_its_prefix():
    run = TaggedRun("user:me", "project:torchperf", "project_branch:test.sweep_x_c1_n64")
    assert analytics.on_branch(run, {"sweep_x_c1_n64"})
    assert not analytics.on_branch(run, {"sweep_x_c1_n32"})
    assert not analytics.on_branch(TaggedRun("user:me"), {"sweep_x_c1_n64"})


def test_a_row_is_compared_with_its_baseline_cell_once_when_read():
    base = [100.0 + 0.1 * i for i in range(20)]
    cells = {(1, 64, "cpu"): {"run": "TorchPerfFlow/1", "samples": base, "gflops": 101.0}}
    result = make_result(50.5, samples=[0.5 * x for x in base])
    config = {"cpu": 1, "tensor_dim": 64, "device": "cpu"}
    row = analytics.row_from_run("TorchPerfFlow/2", config, result, "2025", lambda: cells)
    assert row["baseline"]["verdict"] == "slower"
    assert row["baseline"]["ratio"] == pytest.approx(0.5, rel=0.01)
    # No cell of that shape in the baseline, or no baseline: nothing to compare.
    other = {**config, "tensor_dim": 128}
    assert (
        analytics.row_from_run("TorchPerfFlow/3", other, result, "2025", lambda: cells)["baseline"]
        is None
    )
    assert analytics.row_from_run("TorchPerfFlow/4", config, result, "2025")["baseline"] is None


def test_the_baseline_reaches_the_analytics_config_only_when_set(tmp_path):
    from torchperf.backends.base import SweepSpec

    spec = SweepSpec(tag="t", event="e", sweep_dir=tmp_path)
    assert "baseline" not in spec.analytics_config()
    spec.baseline = "sweep_a"
    assert spec.analytics_config()["baseline"] == "sweep_a"
    assert analytics.analytics_config(spec.analytics_config())["baseline"] == "sweep_a"


# ---- Mixed CPU models ------------------------------------------------------------------------


def on_model(row: dict, model: str | None) -> dict:
    return {**row, "env": {**row["env"], "cpu_model": model}}


class FakeCard(list):
    """current.card[...] as fill_card uses it: components appended in order."""


def card_lines(rows, **extra) -> list[str]:
    from torchperf import report

    card = FakeCard()
    results = analytics.to_frame(analytics.derive(rows))
    report.fill_card(card, tag="sweep_x", results=results, figures={}, **extra)
    return [line for c in card for line in str(c.render().get("source", "")).splitlines()]


def test_a_card_of_variants_on_two_cpu_models_says_so_in_one_line():
    rows = [on_model(row, "Xeon 8481C") for row in SWEEP[:3]]
    rows += [on_model(row, "EPYC 9B14") for row in SWEEP[3:]]
    flagged = [line for line in card_lines(rows) if "mixed CPU models" in line]
    assert len(flagged) == 1
    assert (
        "on 2:" in flagged[0] and "EPYC 9B14 (2)" in flagged[0] and "Xeon 8481C (3)" in flagged[0]
    )


def test_one_cpu_model_or_unknown_models_flag_nothing():
    same = [on_model(row, "Xeon 8481C") for row in SWEEP]
    assert analytics.cpu_models_line(same) is None
    assert not [line for line in card_lines(same) if "mixed CPU models" in line]
    # Runs recorded before the fingerprint know no model: no difference to report.
    older = [on_model(SWEEP[0], None), *same[1:]]
    assert analytics.cpu_models_line(older) is None


# ---- collect: which runs it reads and how often ----------------------------------------------


class ListedRun:
    """Enough of metaflow.Run for collect; its figure is readable after ``ready_after`` reads."""

    def __init__(self, pathspec: str, cpu: int, ready_after: int = 0):
        import datetime

        self.pathspec, self.cpu, self.ready_after = pathspec, cpu, ready_after
        self.tags, self.system_tags = frozenset({"sweep_x"}), frozenset()
        self.created_at = datetime.datetime(2025, 1, 1, 0, 0, cpu)
        self.reads = 0


@pytest.fixture
def fake_runs(monkeypatch):
    """torchperf.runs over a dict of ListedRun; listing the tag counts as a failure."""
    from torchperf import runs

    known: dict[str, ListedRun] = {}

    def measured(run):
        run.reads += 1
        if run.reads <= run.ready_after:
            return None
        return {"cpu": run.cpu, "tensor_dim": 64, "device": "cpu"}, make_result(10.0 * run.cpu)

    def no_listing(*_):
        raise AssertionError("listed the tag's runs")

    monkeypatch.setattr(runs, "get_run", known.get)
    monkeypatch.setattr(runs, "measured", measured)
    monkeypatch.setattr(runs, "sweep_runs", no_listing)
    return known


def test_an_announced_run_is_read_by_its_pathspec_without_listing_the_tag(fake_runs):
    fake_runs["TorchPerfFlow/2"] = ListedRun("TorchPerfFlow/2", 2)
    previous = analytics.Previous(
        {"TorchPerfFlow/1": make_row(1, 64, 10.0, run="TorchPerfFlow/1")},
        ended=[{"run": "TorchPerfFlow/0", "cpu": 4, "tensor_dim": 64, "status": "failed"}
               | {"device": "cpu", "reason": "", "created_at": "2025"}],
    )  # fmt: skip
    seen = analytics.collect("sweep_x", previous, announced=["TorchPerfFlow/2"])
    assert sorted(seen.rows) == ["TorchPerfFlow/1", "TorchPerfFlow/2"]
    assert seen.listed == 0 and seen.loaded == 1
    # What the previous aggregation saw end without a result is still shown.
    assert [row["run"] for row in seen.ended] == ["TorchPerfFlow/0"]


def test_a_run_not_yet_readable_is_read_again_after_a_growing_pause_of_a_second_or_more(
    fake_runs,
):
    fake_runs["TorchPerfFlow/3"] = ListedRun("TorchPerfFlow/3", 3, ready_after=3)
    pauses = []
    seen = analytics.collect(
        "sweep_x", {}, announced=["TorchPerfFlow/3"], wait_seconds=60, sleep=pauses.append
    )
    assert list(seen.rows) == ["TorchPerfFlow/3"]
    assert len(pauses) == 3 and pauses[0] >= 1.0
    assert all(later > earlier for earlier, later in itertools.pairwise(pauses))


def test_a_card_from_announced_runs_alone_does_not_call_unseen_variants_not_started():
    # Read from announced runs only, the running variants are not known to the card.
    announced = card_lines(SWEEP, planned=len(SWEEP) + 2, listed=False)
    assert "2 planned variant(s) not announced yet (running or not started)." in announced
    listed = card_lines(SWEEP, planned=len(SWEEP) + 2)
    assert "2 planned variant(s) not started yet." in listed


def test_runs_are_read_again_soon_from_local_files_and_seldom_from_a_shared_service():
    local = analytics.first_poll("local@/home/me/.metaflow")
    service = analytics.first_poll("service@https://metadata.example")
    assert local < service
    # Hundreds of analytics runs share a service: none polls it more than once a second.
    assert service >= 1.0
