"""The benchmark core: arithmetic, statistics, warm-up, core choice, one tiny real measurement."""

import itertools
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
    called = time.time()
    result = bench.measure(32, 1, 0.05)
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


def test_timing_needs_a_warm_up_first():
    with pytest.raises(RuntimeError, match="warm_up"):
        bench.Benchmark(16, 1, 0.05).time()


@pytest.fixture
def squarings(monkeypatch):
    """The wall-clock window of every ``Benchmark.timed`` call, in order: what the cores did."""
    windows = []
    timed = bench.Benchmark.timed

    def recorded(self, calls):
        began = time.time()
        seconds = timed(self, calls)
        windows.append((began, time.time()))
        return seconds

    monkeypatch.setattr(bench.Benchmark, "timed", recorded)
    return windows


def test_keeps_the_cores_busy_until_background_work_ends_and_times_none_of_it(squarings):
    # GIVEN background work that runs for the first three checks
    benchmark = bench.Benchmark(16, 1, 0.05)
    benchmark.warm_up()
    answers, checked_at = [], []
    background = iter([True, True, True, False, True])

    def busy():
        checked_at.append(time.time())
        answers.append(next(background))
        return answers[-1]

    kept_warm_from = len(squarings)
    benchmark.keep_warm_while(busy)
    result = benchmark.time()
    # THEN it returned at the first "not busy", and no check after it
    assert answers == [True, True, True, False]
    # AND it squared between the checks (busy cores) instead of idling
    assert all(
        any(earlier <= began and ended <= later for began, ended in squarings[kept_warm_from:])
        for earlier, later in itertools.pairwise(checked_at)
    )
    # AND the timed samples, the last calls, all began after the background work had ended
    timed = squarings[-len(result["gflops_samples"]) :]
    assert len(squarings) - kept_warm_from > len(timed)
    assert all(began >= checked_at[-1] for began, _ in timed)


class RenderingCard:
    """A benchmark card whose one render is a child process like Metaflow's `card create`,
    which lasts ``seconds`` and writes the times it began and ended to ``times``."""

    def __init__(self, seconds, times):
        self.seconds, self.times, self.calls = seconds, times, []

    def measuring(self, seconds):
        import subprocess
        import sys

        self.calls.append(seconds)
        script = (
            "import sys, time; began = time.time(); time.sleep(float(sys.argv[1])); "
            "open(sys.argv[2], 'w').write(repr((began, time.time())))"
        )
        self.render = subprocess.Popen(
            [sys.executable, "-c", script, str(self.seconds), str(self.times), "card", "create"]
        )


def test_the_card_renders_between_warm_up_and_timing_never_during_timing(tmp_path, squarings):
    import ast

    from torchperf import live
    from torchperf.settings import VariantSettings

    # GIVEN a card whose render takes 0.5 s
    card = RenderingCard(0.5, tmp_path / "render")
    settings = VariantSettings(cpu=1, tensor_dim=16, measure_seconds=0.05)
    result = live.measure(card, settings)
    card.render.wait()
    render_began, render_ended = ast.literal_eval((tmp_path / "render").read_text())
    # THEN the card was shown once, when measuring started, with the budget
    assert card.calls == [0.05]
    # AND every timed sample (the last calls) began after the render had ended
    timed = squarings[-len(result["gflops_samples"]) :]
    assert all(began >= render_ended for began, _ in timed)
    # AND the cores squared, untimed, while it rendered (they were not left to cool)
    untimed = squarings[: -len(timed)]
    assert any(began < render_ended and ended > render_began for began, ended in untimed)
    assert result["gflops"] > 0


def test_a_missing_cuda_device_fails_at_once():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(RuntimeError, match="device=cuda but torch sees no CUDA device"):
        bench.require_device("cuda")
    bench.require_device("cpu")
