"""What earlier runs of a sweep left behind, read through torchperf/runs.py."""

from __future__ import annotations

from dataclasses import dataclass

from torchperf.plan import branch_name
from torchperf.result import Result


@dataclass(frozen=True)
class Done:
    """A variant that already succeeded under the tag."""

    run: str  # pathspec
    gflops: float


def succeeded_variants(tag: str) -> dict[str, Done]:
    """Successful TorchPerfFlow runs tagged ``tag``, by variant branch; the newest wins."""
    from torchperf import runs

    done: dict[str, Done] = {}
    for run in sorted(runs.sweep_runs(tag), key=lambda r: r.created_at):
        if run.successful:
            config, result = run.data.config, Result.from_dict(run.data.result)
            branch = branch_name(tag, config["cpu"], config["tensor_dim"], config["device"])
            done[branch] = Done(run.pathspec, result.gflops)
    return done


def runs_tagged(tag: str) -> int:
    """How many TorchPerfFlow runs carry ``tag``, whatever became of them."""
    from torchperf import runs

    return len(runs.sweep_runs(tag))


def result_details(pathspec: str) -> dict:
    """The interval of the median and the warnings of a run's result, {} where unreadable
    (a run this machine cannot see, a result of a newer schema)."""
    from torchperf import runs

    try:
        result = runs.result_of(pathspec)
    except Exception:  # noqa: BLE001 - the summary goes on without them
        return {}
    return details_of(result)


def details_of(result: Result) -> dict:
    """The interval of the median [low, high, level] and the warnings of a run's result."""
    details = {"warnings": list(result.warnings)}
    if result.interval:
        details["gflops_ci"] = list(result.interval)
    return details
