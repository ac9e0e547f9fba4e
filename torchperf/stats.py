"""Statistics of timed samples, pure and distribution-free: how precise one figure is, and
whether two sets of samples differ.

Written out here rather than taken from scipy: the measuring step runs in the pods' image,
which holds no scipy (image/requirements.txt), and each function is a few lines that the tests
check against known values (and against scipy where it is installed).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95
# A figure is never shown with more digits than this, however tight its interval.
MAX_SIGNIFICANT_FIGURES = 6


@dataclass(frozen=True)
class Interval:
    """A confidence interval and the coverage it really has (order statistics give steps)."""

    low: float
    high: float
    level: float


def _binomial_half_cdf(n: int) -> list[float]:
    """P(B <= k) for B ~ Binomial(n, 1/2), k = 0..n (exact integers, one division each)."""
    total, cumulative, out = 2**n, 0, []
    for k in range(n + 1):
        cumulative += math.comb(n, k)
        out.append(cumulative / total)
    return out


def median_ci(samples: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """The confidence interval of the median from order statistics: [x_(j), x_(n+1-j)] with the
    largest j such that P(B < j) <= (1 - confidence) / 2, B ~ Binomial(n, 1/2).

    Distribution-free: it assumes only independent samples. Below 6 samples no pair of order
    statistics reaches 95 %: the interval is then [min, max] and ``level`` says what it covers.
    """
    values = sorted(samples)
    n = len(values)
    if n == 0:
        raise ValueError("no samples")
    cdf = _binomial_half_cdf(n)
    tail = (1 - confidence) / 2
    # [x_(j), x_(n+1-j)] (1-based) leaves out P(B <= j - 1) on each side; j = 1 is [min, max].
    j = 1
    while j + 1 <= n - j and cdf[j] <= tail:
        j += 1
    return Interval(values[j - 1], values[n - j], 1 - 2 * cdf[j - 1])


def significant_figures(value: float, interval: Interval) -> int:
    """How many digits of ``value`` the interval supports: down to the decimal place of the
    half-width's first digit (205.3 +- 3.9 -> 3: "205"), at least 1 and at most
    MAX_SIGNIFICANT_FIGURES; torch.utils.benchmark trims its figures the same way."""
    half_width = (interval.high - interval.low) / 2
    if value == 0 or not math.isfinite(value):
        return 1
    if half_width <= 0:
        return MAX_SIGNIFICANT_FIGURES
    # The epsilons keep a decade boundary (0.1 computed as 0.09999...) on its decade.
    places = math.floor(math.log10(abs(value)) + 1e-9) - math.floor(math.log10(half_width) + 1e-9)
    figures = places + 1
    return min(max(figures, 1), MAX_SIGNIFICANT_FIGURES)


def _at_place(value: float, place: int) -> str:
    """``value`` rounded to the decimal place 10**place, written without an exponent."""
    return f"{round(value, -place):.{max(-place, 0)}f}"


def round_to(value: float, figures: int) -> str:
    """``value`` written with ``figures`` significant figures, without an exponent:
    (204.96, 3) -> "205", (0.01234, 2) -> "0.012", (123456, 2) -> "120000"."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    return _at_place(value, math.floor(math.log10(abs(value))) - figures + 1)


def describe(
    median: float, low: float, high: float, level: float | None, unit: str = "GFLOP/s"
) -> str:
    """'205 GFLOP/s (95 % CI 201–209)': the figure with the digits the interval supports, and
    the bounds to the same decimal place; "(CI 201–209)" where the coverage is not known.

    Shown to people through ``display.figure``, which also handles a missing interval."""
    if median == 0 or not math.isfinite(median):
        return f"{median:g} {unit}"
    figures = significant_figures(median, Interval(low, high, level or 0.0))
    place = math.floor(math.log10(abs(median))) - figures + 1
    shown = f"{_at_place(median, place)} {unit}".strip()
    bounds = f"{_at_place(low, place)}–{_at_place(high, place)}"
    coverage = "" if level is None else f"{100 * level:.0f} % "
    return f"{shown} ({coverage}CI {bounds})"


# ---- Two samples -------------------------------------------------------------------------


@dataclass(frozen=True)
class MannWhitney:
    """Mann-Whitney U of ``b`` against ``a``: U counts the pairs where b wins (ties count 1/2)."""

    u: float
    z: float
    p_value: float  # two-sided


def _ranks(values: Sequence[float]) -> tuple[list[float], list[int]]:
    """Mid-ranks (ties share their mean rank) and the sizes of the tied groups."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    ties = []
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        ties.append(j - i + 1)
        i = j + 1
    return ranks, ties


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> MannWhitney:
    """Two-sided Mann-Whitney U test, normal approximation with tie and continuity correction
    (what scipy.stats.mannwhitneyu(b, a, method="asymptotic") gives). Reliable from about 8
    samples a side; a sweep's variant has 20 (2 s of 0.1 s samples) or more."""
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        raise ValueError("both samples need values")
    ranks, ties = _ranks([*a, *b])
    u = sum(ranks[n:]) - m * (m + 1) / 2
    mean = n * m / 2
    total = n + m
    tie_term = sum(t**3 - t for t in ties) / (total * (total - 1))
    variance = n * m / 12 * ((total + 1) - tie_term)
    if variance <= 0:  # every value equal: no evidence of a difference
        return MannWhitney(u, 0.0, 1.0)
    distance = abs(u - mean) - 0.5  # continuity correction
    z = math.copysign(max(distance, 0.0) / math.sqrt(variance), u - mean)
    p_value = min(1.0, math.erfc(abs(z) / math.sqrt(2)))
    return MannWhitney(u, z, p_value)


def _normal_quantile(p: float) -> float:
    return statistics.NormalDist().inv_cdf(p)


def ratio_ci(
    a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE
) -> tuple[float, Interval]:
    """The ratio b / a as the Hodges-Lehmann estimate on logarithms (the median of all
    log(b_j / a_i)), with the distribution-free interval that goes with the Mann-Whitney test:
    order statistics of those pairwise ratios, cut where U's normal approximation puts the
    tails. Needs positive values (throughputs are)."""
    if min(a) <= 0 or min(b) <= 0:
        raise ValueError("ratios need positive samples")
    log_a, log_b = [math.log(x) for x in a], [math.log(y) for y in b]
    differences = sorted(y - x for x in log_a for y in log_b)
    pairs = len(differences)
    n, m = len(a), len(b)
    z = _normal_quantile(1 - (1 - confidence) / 2)
    # The k-th smallest and k-th largest differences bound the shift (Bauer 1972).
    k = math.floor(n * m / 2 - z * math.sqrt(n * m * (n + m + 1) / 12))
    k = min(max(k, 0), (pairs - 1) // 2)
    estimate = math.exp(statistics.median(differences))
    level = confidence if k > 0 else 1.0
    return estimate, Interval(math.exp(differences[k]), math.exp(differences[pairs - 1 - k]), level)


FASTER, SLOWER, SAME = "faster", "slower", "same"


def verdict(ratio: float, p_value: float, *, threshold: float = 0.05, alpha: float = 0.05) -> str:
    """faster, slower or same for B against A (ratio = B / A of a throughput: above 1 is
    faster). Only a change that is both significant (p < alpha) and larger than ``threshold``
    (a share: 0.05 is 5 %) counts."""
    if p_value >= alpha:
        return SAME
    if ratio > 1 + threshold:
        return FASTER
    if ratio < 1 - threshold:
        return SLOWER
    return SAME
