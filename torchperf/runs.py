"""The one seam that reads a sweep's runs through Metaflow's client (its public API only).

Every run of a sweep carries the sweep's tag and runs in its own @project branch, so reads look
across all namespaces. Metaflow's client filters ``Flow.runs(tag)`` on the client: the metadata
service answers one request listing every run of the flow, and its size grows with every run
ever made. Listing is therefore kept for reads that need the whole sweep (resume, compare, an
analytics run nobody announced runs to); a run known by its pathspec is read directly.
"""

from __future__ import annotations

from collections.abc import Iterable

from torchperf.result import Result

VARIANT_FLOW = "TorchPerfFlow"
ANALYTICS_FLOW = "SweepAnalyticsFlow"


def _client():
    from metaflow import namespace

    namespace(None)  # variants run in their own @project branches


def sweep_runs(tag: str, flow_name: str = VARIANT_FLOW) -> list:
    """The runs of ``flow_name`` carrying ``tag``, newest first; [] where the flow has none."""
    from metaflow import Flow
    from metaflow.exception import MetaflowNotFound

    _client()
    try:
        return list(Flow(flow_name).runs(tag))
    except MetaflowNotFound:
        return []


def get_run(pathspec: str):
    """The run at ``pathspec``, or None where this metadata does not know it."""
    from metaflow import Run
    from metaflow.exception import MetaflowNotFound

    _client()
    try:
        return Run(pathspec)
    except MetaflowNotFound:
        return None


def add_tags(pathspec: str, tags: Iterable[str]) -> None:
    """Tag a run; a run Metaflow does not know (it never started) is left."""
    run = get_run(pathspec)
    if run is not None:
        run.add_tags(list(tags))


def start_task(run):
    """The run's ``start`` task, None while it has none."""
    if "start" not in run:
        return None
    return run["start"].task


def measured(run) -> tuple[dict, dict] | None:
    """(config, result) of a variant whose measuring step succeeded, else None.

    The figure is saved by ``start``: a run whose ``end`` step is still going (it announces its
    success from there) is read without waiting for Metaflow to call the run successful."""
    task = start_task(run)
    if task is None or not task.successful:
        return None
    data = task.data
    return dict(data.config), data.result


def result_of(pathspec: str) -> Result:
    """The result a successful variant run recorded (ResultSchemaError for a newer schema)."""
    from metaflow import Run

    _client()
    return Result.from_dict(Run(pathspec).data.result)


def latest_analytics_state(tag: str, current_run_id: str | None):
    """The ``start`` task of the newest analytics run for ``tag`` whose ``start`` succeeded
    (its ``end`` may still be going), other than the current one; None where none did."""
    for run in sweep_runs(tag, ANALYTICS_FLOW):  # newest first
        if run.id == current_run_id:
            continue
        task = start_task(run)
        if task is not None and task.successful:
            return task
    return None
