"""Aggregation of one sweep: rows from run results, derived metrics and the incremental merge.

The pure functions work on plain dicts, one per TorchPerfFlow run, keyed by the run's pathspec;
``collect`` at the bottom reads the runs, through torchperf/runs.py.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

from torchperf.plan import check_tag, event_name
from torchperf.result import Result
from torchperf.settings import ConfigError

# The columns of the ``results`` frame, in order.
COLUMNS = (
    "cpu",
    "tensor_dim",
    "device",
    "gflops",
    "iqr_ratio",
    "speedup",
    "efficiency",
    "noisy",
    "gflops_ci_low",
    "gflops_ci_high",
    "gflops_ci_level",
    "warnings",
    "env",
    "baseline",
    "run",
    "created_at",
)
# The fingerprint fields a row keeps (the card shows them; the rest stays in the run's result).
ENV_FIELDS = (
    "cpu_model",
    "cpu_capability",
    "torch_version",
    "blas",
    "host",
    "node",
    "qos_class",
    "image",
    "image_digest",
)
# How long an analytics run waits for a variant that is in its last step (its event may arrive
# before Metaflow marks it successful) before leaving it to the next aggregation.
DEFAULT_WAIT_SECONDS = 60.0
ANALYTICS_DEFAULTS = {
    "tag": None,  # the sweep's tag: required
    "event": None,  # the event that triggers the flow on Argo; derived from the tag when null
    "planned": None,  # how many variants the sweep plans, when known
    "wait_seconds": DEFAULT_WAIT_SECONDS,  # wait at most this long for variants in their end step
    "wait_for": [],  # @project branches of variants that have measured: wait for them as well
    "card_drawn": None,  # a file to touch once the card is drawn (a local sweep's next turn)
    "baseline": None,  # an earlier sweep's tag: each variant is compared with its cell there
}


def analytics_config(raw: Mapping | None) -> dict:
    """The analytics flow's config with defaults filled in; a null tag keeps ``event`` null."""
    raw = dict(raw or {})
    unknown = sorted(set(raw) - set(ANALYTICS_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}; known: {', '.join(ANALYTICS_DEFAULTS)}")
    config = {**ANALYTICS_DEFAULTS, **raw}
    if config["tag"] is not None and config["event"] is None:
        config["event"] = event_name(config["tag"])
    return config


def require_tag(config: Mapping) -> str:
    """The tag to aggregate, or a one-line error naming how to pass it."""
    tag = config.get("tag")
    if not tag:
        raise ConfigError(
            'config.tag is required: run with --config-value config \'{"tag": "<sweep tag>"}\''
        )
    return check_tag(tag)


def row_from_run(
    pathspec: str,
    config: Mapping,
    result: Mapping | Result,
    created_at: str,
    baseline: Callable[[], Mapping[tuple, dict]] | None = None,
) -> dict:
    """The fields of one TorchPerfFlow run that the aggregate keeps (not its samples).

    ``result`` is the run's artifact (read with torchperf/result.py) or a Result. Runs measured
    before the interval and the fingerprint were recorded get NaN and None for them."""
    if not isinstance(result, Result):
        result = Result.from_dict(result)
    low, high = result.gflops_ci or (math.nan, math.nan)
    level = result.gflops_ci_level
    return {
        "run": pathspec,
        "cpu": int(config["cpu"]),
        "tensor_dim": int(config["tensor_dim"]),
        "device": config.get("device", "cpu"),
        "gflops": float(result.gflops),
        "iqr_ratio": float(result.iqr_ratio),
        "noisy": bool(result.noisy),
        "gflops_ci_low": float(low),
        "gflops_ci_high": float(high),
        "gflops_ci_level": math.nan if level is None else float(level),
        "warnings": list(result.warnings),
        "env": {key: result.env.get(key) for key in ENV_FIELDS},
        "created_at": created_at,
        "baseline": against_baseline(config, result, baseline() if baseline else None),
    }


def against_baseline(config: Mapping, result: Result, cells: Mapping[tuple, dict] | None):
    """The variant against its cell of the baseline sweep (compare's entry: ratio, interval,
    p, verdict), None without a baseline or a matching cell. Computed once per run: the
    samples are not kept in the row."""
    from torchperf.compare import cell_key, cell_of, compare_cells

    key = cell_key(config)
    if not cells or key not in cells:
        return None
    (entry,) = compare_cells({key: cells[key]}, {key: cell_of(None, result)})
    return {name: entry[name] for name in ("gflops_a", "ratio", "ratio_ci", "verdict")}


def merge_rows(previous: Mapping[str, dict], new: Iterable[dict]) -> dict[str, dict]:
    """Seen rows plus new ones, keyed by run pathspec: a run delivered twice counts once."""
    merged = dict(previous)
    for row in new:
        merged[row["run"]] = row
    return merged


def cell(row: Mapping) -> tuple:
    """A row's variant: (cpu, tensor_dim, device); rows of older runs have no device: the CPU."""
    return row["cpu"], row["tensor_dim"], row.get("device") or "cpu"


def latest_per_variant(rows: Iterable[dict]) -> list[dict]:
    """One row per (cpu, tensor_dim, device): a variant run again counts with its newest run."""
    latest: dict[tuple, dict] = {}
    for row in rows:
        key = cell(row)
        if key not in latest or row["created_at"] > latest[key]["created_at"]:
            latest[key] = row
    return [latest[key] for key in sorted(latest, key=lambda k: (k[2], k[1], k[0]))]


def derive(rows: Iterable[dict]) -> list[dict]:
    """Add speed-up and parallel efficiency against the smallest cpu of each device.

    speedup = GFLOP/s / GFLOP/s of the same tensor_dim and device at that device's smallest cpu;
    efficiency = speedup / (cpu / smallest cpu). Both are NaN where that baseline is missing.
    """
    rows = latest_per_variant(rows)
    base_cpu: dict[str, int] = {}
    for row in rows:
        device = cell(row)[2]
        base_cpu[device] = min(base_cpu.get(device, row["cpu"]), row["cpu"])
    base = {cell(row)[1:]: row["gflops"] for row in rows if row["cpu"] == base_cpu[cell(row)[2]]}
    derived = []
    for row in rows:
        reference = base.get(cell(row)[1:])
        speedup = row["gflops"] / reference if reference else math.nan
        ratio = row["cpu"] / base_cpu[cell(row)[2]]
        derived.append({**row, "speedup": speedup, "efficiency": speedup / ratio})
    return derived


def series(rows: Iterable[dict]) -> list[tuple[int, str]]:
    """The (tensor_dim, device) lines of the charts and columns of the tables, CPU first."""
    return sorted({cell(row)[1:] for row in rows}, key=lambda s: (s[1] != "cpu", s[1], s[0]))


def gflops_table(rows: Iterable[dict]) -> tuple[list[int], list[tuple], list[list[float | None]]]:
    """GFLOP/s as a cpu x (tensor_dim, device) grid: (cpus, series, cells[cpu][series])."""
    rows = list(rows)
    cpus = sorted({row["cpu"] for row in rows})
    columns = series(rows)
    value = {cell(row): row["gflops"] for row in rows}
    return cpus, columns, [[value.get((cpu, *column)) for column in columns] for cpu in cpus]


def cpu_models_line(rows: Iterable[Mapping]) -> str | None:
    """One line where a sweep's variants ran on more than one CPU model (a mixed node pool):
    its speed-ups then compare different machines. None where one model (or none) is known."""
    counts: dict[str, int] = {}
    for row in rows:
        model = (row.get("env") or {}).get("cpu_model")
        if model:
            counts[model] = counts.get(model, 0) + 1
    if len(counts) < 2:
        return None
    shown = "; ".join(f"{model} ({n})" for model, n in sorted(counts.items()))
    return f"mixed CPU models: the variants ran on {len(counts)}: {shown}"


# How the statuses of variants that ended without a result read, in the order shown.
ENDED_TEXT = {"failed": "failed", "timeout": "timed out", "cancelled": "cancelled"}


def ended_counts(ended: Iterable[Mapping]) -> dict[str, int]:
    """How many variants ended without a result, by status (failed, timeout, cancelled)."""
    counts = dict.fromkeys(ENDED_TEXT, 0)
    for row in ended:
        counts[row.get("status") or "failed"] += 1
    return counts


def progress_line(tag: str, done: int, ended: Mapping[str, int], planned: int | None) -> str:
    """'N of M variants done (F failed, T timed out)', or without M where the plan is unknown;
    "(0 failed)" when nothing ended without a result."""
    of = f" of {planned}" if planned else ""
    parts = [f"{count} {ENDED_TEXT[status]}" for status, count in ended.items() if count]
    return f"Sweep `{tag}`: {done}{of} variants done ({', '.join(parts) or '0 failed'})"


def to_frame(rows: Iterable[dict]):
    """The ``results`` DataFrame: one row per successful variant, in COLUMNS order."""
    import pandas as pd

    return pd.DataFrame(list(rows), columns=list(COLUMNS))


# ---- The seam: reading runs through the Metaflow client ------------------------------------

SUCCESSFUL, FAILED, RUNNING = "successful", "failed", "running"
# A tag the sweep adds to a run that ended without a result: the variant, its status and the
# reason as JSON after this prefix. A killed run looks the same as a running one to the Metaflow
# client and may hold no artifact yet (not even its config); only the sweep knows why it ended.
ENDED_TAG = "torchperf_ended:"
# Metaflow refuses tags longer than 500 characters.
REASON_LIMIT = 300


def ended_tag(cpu: int, tensor_dim: int, device: str, status: str, reason: str | None) -> str:
    """The mark of a variant's run that ended without a result."""
    mark = {"cpu": cpu, "tensor_dim": tensor_dim, "device": device, "status": status}
    return ENDED_TAG + json.dumps(mark | {"reason": (reason or "")[:REASON_LIMIT]})


def mark_ended(pathspec: str, tag: str) -> None:
    """Add ``tag`` (``ended_tag``) to a run, for the analytics card; a run Metaflow does not
    know (it never started) is left."""
    from torchperf import runs

    runs.add_tags(pathspec, [tag])


def ended_mark(tags: Iterable[str]) -> dict | None:
    """The sweep's mark among a run's tags (cpu, tensor_dim, device, status, reason), or None."""
    for tag in tags:
        if tag.startswith(ENDED_TAG):
            try:
                return json.loads(tag[len(ENDED_TAG) :])
            except ValueError:
                continue
    return None


def run_status(run) -> str:
    """successful, failed (some task's last attempt failed), or running (neither, yet).

    A run that failed never reaches its end step, so ``run.finished`` stays false; the failed
    task's ``attempt_ok`` metadata (written even when its artifacts fail to save) tells it
    apart from one still running. Failed runs are never memoized: a retry that later succeeds
    moves the variant to done at the next aggregation. A run killed without a chance to write
    ``attempt_ok`` (a lost node) stays "running".
    """
    if run.successful:
        return SUCCESSFUL
    for step in run:
        for task in step:
            if task.metadata_dict.get("attempt_ok") == "False":
                return FAILED
    return RUNNING


def in_end_step(run) -> bool:
    """Whether the run's last step has started: its success is seconds away, worth waiting."""
    return run.end_task is not None


def on_branch(run, branches: Collection[str]) -> bool:
    """Whether the run ran in one of these @project branches (``test.<branch>`` and the like)."""
    for system_tag in run.system_tags:
        if system_tag.startswith("project_branch:"):
            return system_tag.split(".", 1)[-1] in branches
    return False


@dataclass
class Collected:
    """What one aggregation saw: every successful row so far, the runs that ended without a
    result (failed, timed out, cancelled: with the reason the sweep gave, where it gave one),
    and the runs still running."""

    rows: dict[str, dict]
    ended: list[dict] = field(default_factory=list)
    running: list[str] = field(default_factory=list)
    listed: int = 0  # runs listed by the sweep's tag (0: only the announced runs were read)
    loaded: int = 0  # runs whose artifacts were read this time
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class Previous:
    """What the previous analytics run of the sweep saved: its rows, and the variants it saw
    end without a result (an announced-only read does not list the runs to find them)."""

    rows: dict[str, dict] = field(default_factory=dict)
    ended: list[dict] = field(default_factory=list)


def _ended_row(run, mark: Mapping | None) -> dict:
    """A run that ended without a result: as the sweep's mark says, else a failed run as its
    config says (a run that failed before saving its config has no variant to show)."""
    if mark is None:
        try:
            config = run["start"].task.data.config
        except (KeyError, AttributeError):
            config = {}
        mark = {key: config.get(key) for key in ("cpu", "tensor_dim", "device")}
        mark |= {"status": "failed", "reason": ""}
    return {
        "run": run.pathspec,
        "cpu": mark.get("cpu"),
        "tensor_dim": mark.get("tensor_dim"),
        "device": mark.get("device") or "cpu",
        "status": mark.get("status", "failed"),  # failed, timeout or cancelled
        "reason": mark.get("reason", ""),  # the sweep's one line; "" where it gave none
        "created_at": run.created_at.isoformat(),
    }


# A run in its end step, or one the sweep knows has measured, whose figure is not readable yet
# is read again after POLL_SECONDS, then twice as long each time up to POLL_LIMIT: hundreds of
# analytics runs must not poll the metadata service many times a second.
POLL_SECONDS = 1.0
POLL_LIMIT = 8.0
# A local metadata store is this machine's own files, and nobody else's: there the first read
# again comes after 50 ms, so that a local sweep's card and final report wait no longer than the
# run's own end (a second here was a fifth of a local variant's overhead).
LOCAL_POLL_SECONDS = 0.05


def first_poll(metadata: str) -> float:
    """How soon a run not readable yet is read again, for Metaflow's ``get_metadata()`` answer
    ("local@/path", "service@https://..."): soon from local files, POLL_SECONDS from a service
    that every analytics run of every sweep shares."""
    return LOCAL_POLL_SECONDS if metadata.startswith("local") else POLL_SECONDS


def collect(
    tag: str,
    previous: Mapping[str, dict] | Previous,
    *,
    announced: Collection[str] = (),
    wait_seconds: float = 0.0,
    wait_for: Collection[str] = (),
    poll_seconds: float = POLL_SECONDS,
    flow_name: str = "TorchPerfFlow",
    baseline: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Collected:
    """Read the sweep's runs not in ``previous`` and merge the successful ones.

    ``announced``: the runs whose success events started this aggregation (on Argo). Only they
    are read, each by its pathspec: Metaflow's client lists a tag's runs by fetching every run
    of the flow ever made, so an event costs the same requests however many runs other sweeps
    left. Without announced runs (a local sweep, the sweep's final aggregation, a run by hand)
    the tag's runs are listed and every unseen one is looked at. A run whose measuring step
    succeeded is read at once, even while its end step is still going; runs in the branches
    ``wait_for`` (variants known to have measured) and runs already in their end step are read
    again, with a back-off from ``poll_seconds``, for up to ``wait_seconds``; other unfinished
    runs are left for the next aggregation.
    """
    from torchperf import runs

    if not isinstance(previous, Previous):
        previous = Previous(dict(previous))
    started = time.perf_counter()
    baseline_cells = None
    if baseline:
        from functools import cache

        from torchperf.compare import load_sweep

        # Read only when a new run needs it: a trigger that finds nothing new reads nothing.
        baseline_cells = cache(lambda: load_sweep(baseline))
    measured = set(announced)
    if announced:
        listed = []
        found = (runs.get_run(pathspec) for pathspec in measured - set(previous.rows))
        unseen = [run for run in found if run is not None]
    else:
        listed = runs.sweep_runs(tag, flow_name)
        unseen = [run for run in listed if run.pathspec not in previous.rows]
    listing = time.perf_counter() - started
    deadline = time.monotonic() + wait_seconds
    delay = poll_seconds
    new, ended, running = [], [], []
    while True:
        waiting = []
        for run in unseen:
            # An announced run has measured and reached its end step: no status to read.
            status = RUNNING if run.pathspec in measured else run_status(run)
            mark = ended_mark(run.tags) if status != SUCCESSFUL else None
            if mark:
                ended.append(_ended_row(run, mark))
            elif status == FAILED:
                ended.append(_ended_row(run, None))
            elif (
                status == SUCCESSFUL
                or run.pathspec in measured
                or on_branch(run, wait_for)
                or in_end_step(run)
            ):
                got = runs.measured(run)
                if got is not None:
                    config, result = got
                    created = run.created_at.isoformat()
                    new.append(row_from_run(run.pathspec, config, result, created, baseline_cells))
                elif time.monotonic() < deadline:
                    waiting.append(run)
                else:
                    running.append(run.pathspec)
            else:
                running.append(run.pathspec)
        if not waiting:
            break
        sleep(max(0.0, min(delay, deadline - time.monotonic())))
        delay = min(2 * delay, POLL_LIMIT)
        unseen = waiting
    rows = merge_rows(previous.rows, new)
    done_variants = {cell(row) for row in latest_per_variant(rows.values())}
    # Only a listing sees every run that ended: an announced-only read keeps what the previous
    # aggregation saw. A variant that failed once and then succeeded in a later run is done,
    # not failed; one that ended without a result more than once counts once, with its newest.
    carried = list(previous.ended) if announced else []
    newest: dict[tuple, dict] = {}
    for row in sorted([*carried, *ended], key=lambda row: row["created_at"]):
        if cell(row) not in done_variants:
            newest[cell(row)] = row
    return Collected(
        rows=rows,
        ended=list(newest.values()),
        running=running,
        listed=len(listed),
        loaded=len(new),
        seconds={"list": listing, "total": time.perf_counter() - started},
    )


def previous_state(tag: str, current_run_id: str | None) -> Previous:
    """What the latest analytics run for ``tag`` whose ``start`` step succeeded saved (its
    end step may not have finished), or an empty state."""
    from torchperf import runs

    task = runs.latest_analytics_state(tag, current_run_id)
    if task is None:
        return Previous()
    data = task.data
    return Previous(dict(data.rows), list(getattr(data, "ended", None) or []))


# ---- On Argo: the run an event announced must be visible ----------------------------------

# A triggering event's payload reaches the pod as METAFLOW_ARGO_EVENT_PAYLOAD_<type>_<name>.
EVENT_PAYLOAD_PREFIX = "METAFLOW_ARGO_EVENT_PAYLOAD_"


def announced_runs(environ: Mapping[str, str]) -> list[str]:
    """The TorchPerfFlow runs whose success events started this analytics run (Argo only)."""
    import json

    runs = []
    for key, value in environ.items():
        if key.startswith(EVENT_PAYLOAD_PREFIX) and value not in ("", "null"):
            try:
                run = json.loads(value).get("run")
            except (TypeError, ValueError, AttributeError):
                continue
            if run:
                runs.append(run)
    return runs


def check_visible(announced: Iterable[str], seen: Collected) -> None:
    """An announced run this aggregation cannot see means the pods share no metadata: say so
    instead of drawing a card of "0 of N"."""
    visible = set(seen.rows) | set(seen.running) | {row["run"] for row in seen.ended}
    for run in announced:
        if run not in visible:
            raise ConfigError(
                f"{run} announced its success but is not visible here: the pods need a shared "
                "metadata service (METAFLOW_DEFAULT_METADATA=service, METAFLOW_SERVICE_URL)"
            )
