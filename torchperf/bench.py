"""The benchmark: fp32 matrix squaring throughput, as pure functions around one timed loop.

Only ``Benchmark`` touches torch (imported there, so importing this module stays cheap).
"""

from __future__ import annotations

import glob
import os
import statistics
import time
from collections.abc import Callable, Sequence

from torchperf import stats

# A timed sample lasts about this long: long enough for perf_counter and to span the scheduler's
# time slices (a sample shorter than a slice can miss a competitor), short enough for many.
SAMPLE_SECONDS = 0.1
# A budget gives at least this many samples (shorter ones if it must): the median's interval
# needs them.
MIN_SAMPLES = 10
# Warm-up samples are shorter: they only have to agree (SETTLE_WINDOW of them), and each one
# sizes the next and, at the end, the timed ones.
WARMUP_SHARE = 0.2
# Warm-up ends when this many consecutive samples agree within SETTLE_TOLERANCE of their median.
SETTLE_WINDOW = 3
SETTLE_TOLERANCE = 0.02
# Samples spread wider than this (IQR / median) mark the number as noisy.
NOISY_IQR_RATIO = 0.05
# A measurement whose process got less CPU time than this share of threads x wall time over its
# timed samples shared its cores. Alone, the share is 0.99-1.01 here even for tiny matrices
# (OpenMP's threads spin between calls); one busy process on one measured core brings it to
# 0.50 at 1 thread and 0.6-0.7 at 2 (checked on 2 cores, n = 32 to 512).
SHARED_BELOW = 0.85
# ... and its threads waited in the run queue for a core longer than this share of threads x
# wall time (where /proc says: alone 0.00-0.01, with a competitor 0.3-0.8). This keeps threads
# that sleep instead of spinning (OMP_WAIT_POLICY=passive) from looking like contention.
WAITED_ABOVE = 0.05


def flops_per_squaring(tensor_dim: int) -> int:
    """Floating-point operations of one n x n by n x n product: n^2 dot products of length n."""
    return 2 * tensor_dim**3


def gflops(tensor_dim: int, calls: int, seconds: float) -> float:
    """Throughput of ``calls`` squarings that took ``seconds``."""
    return flops_per_squaring(tensor_dim) * calls / seconds / 1e9


def summarize(samples: Sequence[float]) -> dict:
    """Median, quartiles and the IQR / median ratio of per-sample GFLOP/s."""
    if not samples:
        raise ValueError("no samples to summarize")
    median = statistics.median(samples)
    if len(samples) > 1:
        q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    else:
        q1 = q3 = median
    iqr_ratio = (q3 - q1) / median if median > 0 else float("inf")
    interval = stats.median_ci(samples)
    return {
        "gflops": median,
        "gflops_q1": q1,
        "gflops_q3": q3,
        "iqr_ratio": iqr_ratio,
        "noisy": iqr_ratio > NOISY_IQR_RATIO,
        # The median's distribution-free confidence interval and the digits it supports.
        "gflops_ci": [interval.low, interval.high],
        "gflops_ci_level": interval.level,
        "gflops_sig_figs": stats.significant_figures(median, interval),
    }


def run_queue_seconds() -> float | None:
    """Seconds this process's threads have waited for a core (Linux schedstat), or None."""
    total, found = 0, False
    for path in glob.glob("/proc/self/task/*/schedstat"):
        try:
            with open(path) as stat:
                total += int(stat.read().split()[1])
            found = True
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9 if found else None


def contention(
    cpu_seconds: float, wall_seconds: float, threads: int, waited_seconds: float | None = None
) -> dict:
    """Whether the cores were shared while measuring: the CPU time the process got against
    threads x wall time, confirmed by its run-queue wait where that is known."""
    capacity = threads * wall_seconds
    utilization = cpu_seconds / capacity if capacity > 0 else 1.0
    waited = None if waited_seconds is None or capacity <= 0 else waited_seconds / capacity
    shared = utilization < SHARED_BELOW and (waited is None or waited > WAITED_ABOVE)
    warnings = []
    if shared:
        warnings.append(
            f"shared cores: the process got {100 * utilization:.0f} % of {threads} thread(s) x "
            "wall time while measuring (another process ran on its cores)"
        )
    return {
        "cpu_utilization": utilization,  # CPU time / (threads x wall) over the timed samples
        "run_queue_share": waited,  # run-queue wait / (threads x wall); None: not readable
        "shared": shared,
        "warnings": warnings,
    }


def settled(rates: Sequence[float]) -> bool:
    """Whether the last SETTLE_WINDOW warm-up rates agree, i.e. caches and threads are warm."""
    if len(rates) < SETTLE_WINDOW:
        return False
    window = rates[-SETTLE_WINDOW:]
    middle = statistics.median(window)
    return all(abs(rate - middle) <= SETTLE_TOLERANCE * middle for rate in window)


def sample_seconds(measure_seconds: float) -> float:
    """How long one timed sample should last within a budget of ``measure_seconds``."""
    return min(SAMPLE_SECONDS, measure_seconds / MIN_SAMPLES)


def calls_per_sample(seconds_per_call: float, seconds: float = SAMPLE_SECONDS) -> int:
    """How many squarings make one timed sample of about ``seconds``."""
    return max(1, round(seconds / max(seconds_per_call, 1e-9)))


def choose_cores(cpu: int, allowed: Sequence[int]) -> list[int]:
    """The ``cpu`` lowest-numbered cores of ``allowed``: distinct, and the same on every run."""
    cores = sorted(set(allowed))
    if cpu > len(cores):
        raise ValueError(f"cpu={cpu} exceeds the {len(cores)} cores this process may use")
    return cores[:cpu]


def running_on_kubernetes() -> bool:
    """Inside a Metaflow Kubernetes pod the CPU request and the cgroup bound the threads."""
    return os.environ.get("METAFLOW_KUBERNETES_WORKLOAD") == "1"


def pin_to_cores(cpu: int) -> list[int]:
    """Bind this process to ``cpu`` distinct cores (Linux); return the cores it may use."""
    if not hasattr(os, "sched_setaffinity"):
        return list(range(os.cpu_count() or 1))
    allowed = sorted(os.sched_getaffinity(0))
    if running_on_kubernetes():
        return allowed
    cores = choose_cores(cpu, allowed)
    os.sched_setaffinity(0, cores)
    return cores


def require_device(device: str) -> None:
    """Fail at once where the device to measure is missing (before taking any cores)."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but torch sees no CUDA device")


class Benchmark:
    """One matrix squared on ``threads`` threads, in two phases: ``warm_up``, then ``time``.

    The phases know nothing of displays: a caller that shows progress does so between them,
    and ``keep_warm_while`` keeps the cores busy (untimed) while its display's work runs, so
    that timing starts on warm caches and never overlaps that work.
    """

    def __init__(
        self,
        tensor_dim: int,
        threads: int,
        measure_seconds: float,
        device: str = "cpu",
        max_warmup_seconds: float = 3.0,
    ):
        import torch

        # Before any tensor work, so that the thread pool is created with this many threads.
        torch.set_num_threads(threads)
        require_device(device)
        self.tensor_dim, self.device = tensor_dim, device
        self.measure_seconds, self.max_warmup_seconds = measure_seconds, max_warmup_seconds
        generator = torch.Generator().manual_seed(0)
        self._matrix = torch.rand(tensor_dim, tensor_dim, generator=generator).to(device)
        self._product = torch.empty_like(self._matrix)
        self._sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        self.calls = 1  # squarings per timed sample, sized by the warm-up
        self.warmup_seconds = 0.0
        self.warmup_settled = False
        self.measured_from: float | None = None

    def timed(self, calls: int) -> float:
        """Seconds that ``calls`` squarings take."""
        import torch

        matrix, product = self._matrix, self._product
        self._sync()
        start = time.perf_counter()
        for _ in range(calls):
            torch.mm(matrix, matrix, out=product)
        self._sync()
        return time.perf_counter() - start

    def warm_up(self) -> None:
        """Square until the rates settle (at most ``max_warmup_seconds``); size the samples.

        The first call pays for thread start-up and allocation (10-50x a warm one): it only
        gives a first size, and each warm-up sample sizes the next and the timed ones, which
        last as planned."""
        self.measured_from = time.time()
        target = sample_seconds(self.measure_seconds)
        seconds_per_call = self.timed(1)
        calls = calls_per_sample(seconds_per_call, WARMUP_SHARE * target)
        rates: list[float] = []
        started = time.perf_counter()
        while not settled(rates) and time.perf_counter() - started < self.max_warmup_seconds:
            seconds = self.timed(calls)
            rates.append(gflops(self.tensor_dim, calls, seconds))
            seconds_per_call = seconds / calls
            calls = calls_per_sample(seconds_per_call, WARMUP_SHARE * target)
        self.calls = calls_per_sample(seconds_per_call, target)
        self.warmup_seconds = time.perf_counter() - started
        self.warmup_settled = settled(rates)

    def keep_warm_while(self, busy: Callable[[], bool]) -> None:
        """Untimed samples while ``busy()`` (an idle core comes back slower), then one more:
        whatever ran meanwhile cooled the caches."""
        while busy():
            self.timed(self.calls)
        self.timed(self.calls)

    def time(self) -> dict:
        """The timed samples after ``warm_up``: the figure, its spread and where it came from."""
        import torch

        if self.measured_from is None:
            raise RuntimeError("warm_up() comes before time()")
        calls, measure_seconds = self.calls, self.measure_seconds
        samples: list[float] = []
        measured = 0.0
        # CPU time and run-queue wait over the timed samples only.
        cpu_seconds, waited_seconds = 0.0, 0.0
        waited_known = run_queue_seconds() is not None
        while measured < measure_seconds:
            cpu_before, waited_before = time.process_time(), run_queue_seconds()
            seconds = self.timed(calls)
            cpu_seconds += time.process_time() - cpu_before
            waited_after = run_queue_seconds()
            if waited_known and waited_before is not None and waited_after is not None:
                waited_seconds += waited_after - waited_before
            measured += seconds
            samples.append(gflops(self.tensor_dim, calls, seconds))
        summary = summarize(samples)
        threads = torch.get_num_threads()
        sharing = contention(
            cpu_seconds, measured, threads, waited_seconds if waited_known else None
        )
        return {
            **summary,
            **sharing,
            "gflops_samples": samples,
            "squarings_per_second": summary["gflops"] * 1e9 / flops_per_squaring(self.tensor_dim),
            "calls_per_sample": calls,
            "threads": threads,
            "tensor_dim": self.tensor_dim,
            "device": torch.cuda.get_device_name() if self.device == "cuda" else "cpu",
            # str(): a TorchVersion would make every reader of the artifact import torch.
            "torch_version": str(torch.__version__),
            "measure_seconds": measured,
            "warmup_seconds": self.warmup_seconds,
            "warmup_settled": self.warmup_settled,
            # Wall-clock bounds (epoch seconds) of warm-up and timing: when the cores were taken.
            "measured_from": self.measured_from,
            "measured_until": time.time(),
        }


def measure(
    tensor_dim: int,
    threads: int,
    measure_seconds: float,
    device: str = "cpu",
    max_warmup_seconds: float = 3.0,
) -> dict:
    """Square an n x n fp32 matrix repeatedly and report GFLOP/s per timed sample: warm-up,
    then timed samples until ``measure_seconds`` of them, nothing in between."""
    benchmark = Benchmark(tensor_dim, threads, measure_seconds, device, max_warmup_seconds)
    benchmark.warm_up()
    return benchmark.time()
