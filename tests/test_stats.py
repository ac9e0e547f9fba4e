"""The statistics of samples: the median's interval, significant figures, Mann-Whitney U, the
ratio's interval and the verdict, on samples whose answers are known."""

import math
import random

import pytest

from torchperf import bench, fingerprint, stats


def test_median_interval_of_twenty_samples_is_the_sixth_to_fifteenth():
    # The textbook case: for n = 20, P(B <= 5) = 0.0207 <= 0.025 < P(B <= 6) = 0.0577.
    interval = stats.median_ci([float(x) for x in range(20, 0, -1)])
    assert (interval.low, interval.high) == (6.0, 15.0)
    assert interval.level == pytest.approx(1 - 2 * 21700 / 2**20)


def test_median_interval_below_six_samples_is_the_range_with_its_real_coverage():
    interval = stats.median_ci([3.0, 1.0, 5.0])
    assert (interval.low, interval.high) == (1.0, 5.0)
    assert interval.level == pytest.approx(0.75)  # 1 - 2 / 2**3


def test_median_interval_covers_the_true_median_about_95_percent_of_the_time():
    rng = random.Random(7)
    trials = 2000
    covered = 0
    for _ in range(trials):
        samples = [rng.expovariate(1.0) for _ in range(30)]
        interval = stats.median_ci(samples)
        covered += interval.low <= math.log(2) <= interval.high
    assert 0.93 <= covered / trials <= 0.985


def test_significant_figures_follow_the_interval_width():
    assert stats.significant_figures(205.3, stats.Interval(201.4, 209.2, 0.95)) == 3
    assert stats.significant_figures(205.3, stats.Interval(205.2, 205.4, 0.95)) == 4
    assert stats.significant_figures(205.3, stats.Interval(100.0, 300.0, 0.95)) == 1


def test_describe_shows_the_figure_to_the_digits_its_interval_supports():
    assert stats.describe(204.96, 201.3, 209.1, 0.95) == "205 GFLOP/s (95 % CI 201–209)"
    assert stats.describe(36.812, 36.79, 36.84, 0.9586) == "36.81 GFLOP/s (96 % CI 36.79–36.84)"


def test_round_to_writes_significant_figures_without_an_exponent():
    assert stats.round_to(204.96, 3) == "205"
    assert stats.round_to(0.01234, 2) == "0.012"
    assert stats.round_to(123456.0, 2) == "120000"


def test_mann_whitney_of_separated_samples_counts_every_pair():
    # GIVEN b all above a: U (b's wins) is n * m
    result = stats.mann_whitney([1.0, 2.0, 3.0, 4.0, 5.0], [6.0, 7.0, 8.0, 9.0, 10.0])
    assert result.u == 25.0 and result.z > 0
    # z = (25 - 12.5 - 0.5) / sqrt(5 * 5 * 11 / 12); p = erfc(z / sqrt 2)
    assert result.p_value == pytest.approx(math.erfc(12 / math.sqrt(275 / 12) / math.sqrt(2)))


def test_mann_whitney_of_identical_values_finds_nothing():
    assert stats.mann_whitney([5.0] * 10, [5.0] * 10).p_value == 1.0


def test_mann_whitney_corrects_for_ties():
    # Two tied groups of 10: the variance shrinks by sum(t^3 - t) / (N (N - 1)).
    a, b = [1.0] * 5 + [2.0] * 5, [1.0] * 5 + [2.0] * 5
    assert stats.mann_whitney(a, b).p_value == 1.0
    tied = stats.mann_whitney([1.0] * 8 + [2.0] * 2, [1.0] * 2 + [2.0] * 8)
    variance = 10 * 10 / 12 * (21 - 2 * (10**3 - 10) / (20 * 19))
    assert tied.z == pytest.approx((80 - 50 - 0.5) / math.sqrt(variance))


def test_mann_whitney_agrees_with_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = random.Random(3)
    a = [round(rng.gauss(100, 3), 1) for _ in range(25)]
    b = [round(rng.gauss(98, 3), 1) for _ in range(30)]
    ours = stats.mann_whitney(a, b)
    theirs = scipy_stats.mannwhitneyu(b, a, method="asymptotic")
    assert ours.u == pytest.approx(theirs.statistic)
    assert ours.p_value == pytest.approx(theirs.pvalue)


def test_ratio_of_scaled_samples_is_the_scale_with_a_tight_interval():
    rng = random.Random(5)
    a = [rng.uniform(99, 101) for _ in range(30)]
    b = [0.8 * x for x in a]
    ratio, interval = stats.ratio_ci(a, b)
    assert ratio == pytest.approx(0.8, rel=0.01)
    assert interval.low < ratio < interval.high
    assert interval.low > 0.77 and interval.high < 0.83


def test_ratio_interval_of_the_same_distribution_contains_one():
    rng = random.Random(11)
    a = [rng.gauss(100, 2) for _ in range(40)]
    b = [rng.gauss(100, 2) for _ in range(40)]
    _, interval = stats.ratio_ci(a, b)
    assert interval.low < 1 < interval.high


@pytest.mark.parametrize(
    ("ratio", "p_value", "expected"),
    [
        (0.80, 0.001, "slower"),
        (1.20, 0.001, "faster"),
        (0.97, 0.001, "same"),  # significant but below the 5 % threshold
        (0.80, 0.20, "same"),  # large but not significant
    ],
)
def test_verdict_needs_both_significance_and_size(ratio, p_value, expected):
    assert stats.verdict(ratio, p_value) == expected


def test_verdict_threshold_is_settable():
    assert stats.verdict(0.97, 0.001, threshold=0.02) == "slower"


def test_contention_flags_a_process_that_got_half_its_cores():
    shared = bench.contention(cpu_seconds=0.5, wall_seconds=1.0, threads=1, waited_seconds=0.5)
    assert shared["shared"] and shared["cpu_utilization"] == 0.5
    assert "shared cores" in shared["warnings"][0]
    alone = bench.contention(cpu_seconds=1.98, wall_seconds=1.0, threads=2, waited_seconds=0.01)
    assert not alone["shared"] and alone["warnings"] == []


def test_contention_ignores_threads_that_slept_without_waiting_for_a_core():
    # Half the CPU time, but no run-queue wait: idle threads, not a competitor.
    idle = bench.contention(cpu_seconds=1.0, wall_seconds=1.0, threads=2, waited_seconds=0.0)
    assert not idle["shared"]
    # Where the run queue is not readable, the CPU time alone decides.
    assert bench.contention(cpu_seconds=1.0, wall_seconds=1.0, threads=2)["shared"]


def test_summarize_gives_the_median_interval_and_its_figures():
    samples = [float(x) for x in range(80, 120)]
    summary = bench.summarize(samples)
    interval = stats.median_ci(samples)
    assert summary["gflops_ci"] == [interval.low, interval.high]
    assert summary["gflops_ci"][0] <= summary["gflops"] <= summary["gflops_ci"][1]
    assert summary["gflops_sig_figs"] == stats.significant_figures(summary["gflops"], interval)


def test_a_governor_other_than_performance_is_a_warning(tmp_path):
    for core, name in ((0, "powersave"), (1, "powersave")):
        folder = tmp_path / f"cpu{core}" / "cpufreq"
        folder.mkdir(parents=True)
        (folder / "scaling_governor").write_text(f"{name}\n")
    found = fingerprint.governor([0, 1], root=tmp_path)
    assert found == "powersave"
    assert "powersave" in fingerprint.warnings({"governor": found})[0]
    assert fingerprint.warnings({"governor": "performance"}) == []
    # Unreadable (most VMs and containers): None, and no warning.
    assert fingerprint.governor([0], root=tmp_path / "missing") is None
    assert fingerprint.warnings({"governor": None}) == []


def test_fingerprint_readers_parse_what_torch_and_proc_print():
    cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\ncpu MHz\t\t: 2450.000\n"
    assert fingerprint.cpu_model(cpuinfo) == "AMD EPYC 7B13"
    assert fingerprint.cpu_mhz(cpuinfo) == 2450.0
    config = "  - Build settings: BLAS_INFO=mkl, BUILD_TYPE=Release, USE_OPENMP=ON,"
    assert fingerprint.build_setting(config, "BLAS_INFO") == "mkl"
    assert fingerprint.build_setting(config, "USE_OPENMP") == "ON"
    assert fingerprint.parallel_backend("ATen parallel backend: OpenMP\n") == "OpenMP"


def test_fingerprint_differences_name_the_fields_that_changed():
    a = {"cpu_model": "AMD EPYC", "torch_version": "2.12.0", "host": "a"}
    b = {"cpu_model": "AMD EPYC", "torch_version": "2.13.0", "host": "b"}
    assert fingerprint.differences(a, b) == ["torch_version: 2.12.0 -> 2.13.0"]
