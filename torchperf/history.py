"""What earlier runs of a sweep left behind, read through Metaflow's client."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torchperf.plan import branch_name


@dataclass(frozen=True)
class Done:
    """A variant that already succeeded under the tag."""

    run: str  # pathspec
    gflops: float


def succeeded_variants(tag: str) -> dict[str, Done]:
    """Successful TorchPerfFlow runs tagged ``tag``, by variant branch; the newest wins."""
    from metaflow import Flow, namespace
    from metaflow.exception import MetaflowNotFound

    # Variants run in their own @project branches: look across all namespaces.
    namespace(None)
    try:
        runs = list(Flow("TorchPerfFlow").runs(tag))
    except MetaflowNotFound:
        return {}
    done: dict[str, Done] = {}
    for run in sorted(runs, key=lambda r: r.created_at):
        if run.successful:
            config, result = run.data.config, run.data.result
            branch = branch_name(tag, config["cpu"], config["tensor_dim"], config["device"])
            done[branch] = Done(run.pathspec, float(result["gflops"]))
    return done


def runs_tagged(tag: str) -> int:
    """How many TorchPerfFlow runs carry ``tag``, whatever became of them."""
    from metaflow import Flow, namespace
    from metaflow.exception import MetaflowNotFound

    namespace(None)
    try:
        return sum(1 for _ in Flow("TorchPerfFlow").runs(tag))
    except MetaflowNotFound:
        return 0


def result_details(pathspec: str) -> dict:
    """The interval of the median and the warnings of a run's result, {} where unreadable
    (a run measured before they were recorded, a run this machine cannot see)."""
    from metaflow import Run, namespace

    namespace(None)
    try:
        result = Run(pathspec).data.result
    except Exception:  # noqa: BLE001 - the summary goes on without them
        return {}
    return details_of(result)


def details_of(result: Mapping) -> dict:
    """The interval of the median [low, high, level] and the warnings of a run's result."""
    details = {"warnings": list(result.get("warnings") or [])}
    if result.get("gflops_ci"):
        details["gflops_ci"] = [*result["gflops_ci"], result.get("gflops_ci_level")]
    return details
