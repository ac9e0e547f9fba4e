"""The benchmark core: arithmetic, statistics, warm-up, core choice, one tiny real measurement."""

import statistics
import time

import pytest

from torchperf import bench


def test_gflops_counts_two_flops_per_multiply_add():
    # GIVEN 10 squarings of a 100 x 100 matrix in 0.5 s
    # THEN each squaring is 2 * 100^3 flops
    assert bench.gflops(100, 10, 0.5) == pytest.approx(2 * 100**3 * 10 / 0.5 / 1e9)


def test_summarize_reports_median_and_iqr_ratio():
    samples = [100.0, 101.0, 99.0, 100.5, 99.5]
    stats = bench.summarize(samples)
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    assert stats["gflops"] == statistics.median(samples)
    assert stats["iqr_ratio"] == pytest.approx((q3 - q1) / statistics.median(samples))
    assert stats["noisy"] is False


def test_summarize_flags_spread_above_five_percent_as_noisy():
    assert bench.summarize([80.0, 100.0, 120.0, 90.0, 110.0])["noisy"] is True


def test_summarize_of_one_sample_has_no_spread():
    stats = bench.summarize([42.0])
    assert stats["gflops"] == 42.0 and stats["iqr_ratio"] == 0.0


def test_summarize_refuses_no_samples():
    with pytest.raises(ValueError):
        bench.summarize([])


def test_warmup_settles_only_when_the_last_rates_agree():
    assert not bench.settled([10.0, 50.0])
    assert not bench.settled([10.0, 50.0, 90.0, 100.0])
    assert bench.settled([10.0, 50.0, 99.5, 100.0, 100.4])


def test_samples_last_about_a_tenth_of_a_second():
    assert bench.calls_per_sample(0.01) == round(bench.SAMPLE_SECONDS / 0.01)
    assert bench.calls_per_sample(5.0) == 1


def test_a_short_budget_takes_shorter_samples_not_fewer():
    assert bench.sample_seconds(60.0) == bench.SAMPLE_SECONDS
    assert bench.sample_seconds(0.2) == pytest.approx(0.2 / bench.MIN_SAMPLES)


def test_timed_samples_are_sized_from_warm_calls_not_the_cold_first_one():
    # GIVEN a small matrix, whose first (cold) call is many times slower than a warm one
    budget = 0.5
    result = bench.measure(64, 1, budget)
    # THEN each timed sample lasts about as planned (sized from the cold call, ~1 ms)
    seconds_per_sample = result["calls_per_sample"] / result["squarings_per_second"]
    planned = bench.sample_seconds(budget)
    assert planned / 3 < seconds_per_sample < planned * 3
    assert len(result["gflops_samples"]) >= bench.MIN_SAMPLES / 2


def test_choose_cores_takes_distinct_lowest_cores():
    assert bench.choose_cores(2, [3, 1, 2, 1]) == [1, 2]


def test_choose_cores_rejects_cpu_above_allowed_cores():
    with pytest.raises(ValueError, match="cpu=3"):
        bench.choose_cores(3, [0, 1])


def test_measure_reports_consistent_figures():
    progress = []
    called = time.time()
    result = bench.measure(32, 1, 0.05, on_progress=progress.append, progress_every=0.0)
    returned = time.time()
    samples = result["gflops_samples"]
    # The wall-clock window spans warm-up and timing, within the call.
    assert called <= result["measured_from"] < result["measured_until"] <= returned
    assert (
        result["measured_until"] - result["measured_from"]
        >= result["measure_seconds"] + result["warmup_seconds"]
    )
    assert result["gflops"] == statistics.median(samples) > 0
    assert result["measure_seconds"] >= 0.05
    assert result["squarings_per_second"] * bench.flops_per_squaring(32) == pytest.approx(
        result["gflops"] * 1e9
    )
    assert result["threads"] == 1 and result["tensor_dim"] == 32 and result["device"] == "cpu"
    assert isinstance(result["torch_version"], str) and type(result["torch_version"]) is str
    # Progress is reported between samples, ending with the final figure.
    assert progress[-1].phase == "done" and progress[-1].gflops == result["gflops"]
    assert {p.phase for p in progress} >= {"measuring", "done"}


def test_no_progress_call_in_the_last_interval_of_the_budget():
    # GIVEN progress asked for every 20 ms of a 100 ms budget
    progress = []
    result = bench.measure(16, 1, 0.1, on_progress=progress.append, progress_every=0.02)
    measuring = [p for p in progress if p.phase == "measuring"]
    # THEN it was reported while measuring, but never with less than 20 ms of budget left
    assert measuring and result["measure_seconds"] >= 0.1
    assert all(p.budget_seconds - p.measured_seconds > 0.02 for p in measuring)
    assert progress[-1].phase == "done"


def test_measure_times_nothing_while_background_work_runs():
    # GIVEN background work that runs for the first three checks, and again after a progress call
    checks = []
    background = iter([True, True, True, False, True, True, False] + [False] * 10_000)

    def busy():
        checks.append(time.monotonic())
        return next(background)

    progress = []
    result = bench.measure(16, 1, 0.05, on_progress=progress.append, progress_every=0.0, busy=busy)
    # THEN it waited before warming up, and kept checking after the first progress call
    assert len(checks) >= 7 and progress and result["gflops"] > 0


def test_a_missing_cuda_device_fails_at_once():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(RuntimeError, match="device=cuda but torch sees no CUDA device"):
        bench.require_device("cuda")
    bench.require_device("cpu")
