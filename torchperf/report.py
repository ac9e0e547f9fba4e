"""What a user sees of a sweep: the analytics card, its charts, and the report files.

matplotlib and pandas are imported inside the functions that draw, so that importing this
module (and the flow file) stays cheap.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from torchperf import display
from torchperf.analytics import (
    ENDED_TEXT,
    ENV_FIELDS,
    cell,
    cpu_models_line,
    ended_counts,
    gflops_table,
    progress_line,
    series,
)
from torchperf.bench import NOISY_IQR_RATIO
from torchperf.plan import series_label
from torchperf.stats import CONFIDENCE

CARD_ID = "sweep"
METRICS = ("speedup", "efficiency")
REPORT_FILES = (*(f"{metric}.png" for metric in METRICS), "report.html")
# One colour per line, the same in the Vega chart and the matplotlib figures (Tableau 10, the
# default of both).
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


def colours(rows: Iterable[dict]) -> dict[str, str]:
    """Each line's colour by its label (n=512, n=512 cuda), in the order of ``series``."""
    return {series_label(*line): PALETTE[i % len(PALETTE)] for i, line in enumerate(series(rows))}


def _finite(value) -> float | None:
    """JSON has no NaN: a missing bound is null."""
    return None if value is None or math.isnan(value) else float(value)


def vega_spec(rows: Iterable[dict]) -> dict:
    """Vega-Lite: GFLOP/s against cpu, one line per tensor_dim (and device), each median with
    its confidence interval as an error bar."""
    rows = list(rows)
    values = [
        {
            "cpu": row["cpu"],
            "series": series_label(*cell(row)[1:]),
            "gflops": row["gflops"],
            "low": _finite(row.get("gflops_ci_low")),
            "high": _finite(row.get("gflops_ci_high")),
            "figure": figure_text(row),
        }
        for row in rows
    ]
    palette = colours(rows)
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": "Throughput against cores (bars: the median's confidence interval)",
        "data": {"values": values},
        "encoding": {
            "x": {
                "field": "cpu",
                "type": "quantitative",
                "title": "cpu (cores)",
                # Ticks at the measured core counts only: whole numbers, never 1.5.
                "axis": {"values": sorted({row["cpu"] for row in rows}), "format": "d"},
            },
            "color": {
                "field": "series",
                "type": "nominal",
                "title": "tensor_dim (n)",
                "scale": {"domain": list(palette), "range": list(palette.values())},
            },
        },
        "layer": [
            {
                "mark": {"type": "line", "point": True},
                "encoding": {
                    "y": {"field": "gflops", "type": "quantitative", "title": "GFLOP/s (median)"},
                    "tooltip": [
                        {"field": "cpu", "type": "quantitative"},
                        {"field": "series", "type": "nominal", "title": "tensor_dim"},
                        {"field": "figure", "type": "nominal", "title": "GFLOP/s"},
                    ],
                },
            },
            {
                "transform": [{"filter": "datum.low != null && datum.high != null"}],
                "mark": {"type": "errorbar", "ticks": True},
                "encoding": {
                    "y": {"field": "low", "type": "quantitative", "title": "GFLOP/s (median)"},
                    "y2": {"field": "high"},
                },
            },
        ],
        # A fixed size: "container" (Metaflow's default) measures 0 wide in a headless page.
        "width": 500,
        "height": 300,
    }


def ratio_interval(row: Mapping, base: Mapping | None) -> tuple[float, float]:
    """The widest interval of row's median / base's median that their two intervals allow
    (NaN where either is unknown): a speed-up's uncertainty includes its base's."""
    bounds = [
        math.nan if side is None or side.get(key) is None else float(side[key])
        for side, key in (
            (row, "gflops_ci_low"),
            (row, "gflops_ci_high"),
            (base, "gflops_ci_low"),
            (base, "gflops_ci_high"),
        )
    ]
    low, high, base_low, base_high = bounds
    if not base_low > 0:  # NaN or zero: no ratio
        return math.nan, math.nan
    return low / base_high, high / base_low


def scaling_figure(rows: Sequence[dict], metric: str):
    """speed-up or efficiency against cpu, one line per tensor_dim (and device), each point with
    its interval, and the ideal line; the y axis starts at 0."""
    from matplotlib.figure import Figure

    # A bare Figure needs no pyplot state and no GUI backend.
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.add_subplot()
    cpus = sorted({row["cpu"] for row in rows})
    palette = colours(rows)
    top = 1.0
    for dim, device in series(rows):
        line = sorted((r for r in rows if cell(r)[1:] == (dim, device)), key=lambda r: r["cpu"])
        base = line[0] if line else None
        points = []
        for r in line:
            if math.isnan(r[metric]):
                continue
            low, high = ratio_interval(r, base)
            scale = r[metric] / r["speedup"] if r["speedup"] else math.nan  # 1 or 1 / (cpu/base)
            points.append((r["cpu"], r[metric], low * scale, high * scale))
        if not points:
            continue
        x, y, low, high = zip(*points, strict=True)
        below = [
            max(v - lo, 0.0) if not math.isnan(lo) else 0.0 for v, lo in zip(y, low, strict=True)
        ]
        above = [
            max(hi - v, 0.0) if not math.isnan(hi) else 0.0 for v, hi in zip(y, high, strict=True)
        ]
        axes.errorbar(
            x,
            y,
            yerr=[below, above],
            marker="o",
            capsize=3,
            color=palette[series_label(dim, device)],
            label=series_label(dim, device),
        )
        top = max(top, *(v + a for v, a in zip(y, above, strict=True)))
    if cpus:
        base = cpus[0]
        ideal = [cpu / base for cpu in cpus] if metric == "speedup" else [1.0] * len(cpus)
        axes.plot(cpus, ideal, linestyle="--", color="grey", label="ideal")
        top = max(top, *ideal)
    title, unit = {
        "speedup": ("Speed-up", "x the smallest cpu"),
        "efficiency": ("Parallel efficiency", "speed-up / (cpu / smallest cpu)"),
    }[metric]
    axes.set_title(f"{title} (bars: confidence interval of the ratio of medians)", fontsize=10)
    axes.set_xlabel("cpu (cores)")
    axes.set_ylabel(f"{title.lower()} ({unit})")
    axes.set_xticks(cpus)
    # From 0: an axis that starts near the data makes small differences look large.
    axes.set_ylim(0, top * 1.08)
    axes.grid(alpha=0.3)
    axes.legend(title="tensor_dim")
    return figure


def scaling_pngs(rows: Sequence[dict]) -> dict[str, bytes]:
    """The speed-up and efficiency figures as PNG: drawn once for the card and the report."""
    pngs = {}
    for metric in METRICS:
        buffer = io.BytesIO()
        scaling_figure(rows, metric).savefig(buffer, format="png", dpi=100)
        pngs[metric] = buffer.getvalue()
    return pngs


def figure_text(row: Mapping) -> str:
    """A row's median to the digits its interval supports, with the interval when known."""
    interval = (row.get("gflops_ci_low"), row.get("gflops_ci_high"), row.get("gflops_ci_level"))
    return display.figure(row["gflops"], interval, unit="")


def _table_rows(rows: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    cpus, columns, _ = gflops_table(rows)
    by_cell = {cell(r): r for r in rows}
    headers = ["cpu \\ tensor_dim"] + [series_label(*column) for column in columns]
    body = []
    for cpu in cpus:
        shown = []
        for column in columns:
            row = by_cell.get((cpu, *column))
            if row is None:
                shown.append("-")
                continue
            flags = ["noisy"] if row["noisy"] else []
            flags += [display.warning_name(w) for w in row["warnings"]] if warned(row) else []
            shown.append(figure_text(row) + "".join(f" ({flag})" for flag in flags))
        body.append([str(cpu), *shown])
    return headers, body


def warned(row: Mapping) -> bool:
    warnings = row.get("warnings")
    return bool(warnings) and not (isinstance(warnings, float) and math.isnan(warnings))


BASELINE_HEADERS = ["cpu", "tensor_dim", "baseline GFLOP/s", "GFLOP/s", "B / A", "verdict"]


def baseline_rows(rows: Sequence[dict]) -> list[list[str]]:
    """Each variant against its baseline cell, "-" where the baseline has none."""
    body = []
    for r in rows:
        against = r.get("baseline")
        if not isinstance(against, Mapping):
            body.append(
                [str(r["cpu"]), series_label(*cell(r)[1:]), "-", f"{r['gflops']:.1f}", "-", "-"]
            )
            continue
        low, high = against["ratio_ci"]
        body.append(
            [
                str(r["cpu"]),
                series_label(*cell(r)[1:]),
                f"{against['gflops_a']:.1f}",
                f"{r['gflops']:.1f}",
                display.figure(against["ratio"], (low, high, CONFIDENCE), unit="x"),
                against["verdict"],
            ]
        )
    return body


def environment_rows(rows: Sequence[dict]) -> list[list[str]]:
    """Each fingerprint field with the values seen across the sweep; "differs" where the
    variants were not measured alike (another node type, another image)."""
    body = []
    for key in ENV_FIELDS:
        envs = [env for r in rows if isinstance(env := r.get("env"), Mapping)]
        seen = sorted({display.env_value(key, env.get(key)) for env in envs})
        if seen:
            label = display.ENV_LABELS.get(key, key)
            body.append([label, ", ".join(seen) + (" (differs)" if len(seen) > 1 else "")])
    return body


def fill_card(
    card,
    *,
    tag: str,
    results,
    ended: Sequence[dict] = (),
    running: Sequence[str] = (),
    planned: int | None = None,
    figures: Mapping[str, bytes],
    baseline: str | None = None,
    listed: bool = True,
) -> None:
    """Append the sweep's components to a blank card (``current.card[CARD_ID]``).

    ``ended``: the variants that ended without a result (analytics.Collected.ended), shown with
    their status and reason as the sweep's summary.json has them. ``figures``: the PNGs of
    ``scaling_pngs``, shown when there are results. ``listed``: whether the sweep's runs were
    listed (False: only announced runs were read, so running ones are not known).
    """
    from metaflow.cards import Image, Markdown, Table, VegaChart

    rows = results.to_dict("records")
    counts = ended_counts(ended)
    card.append(Markdown(f"# {progress_line(tag, len(rows), counts, planned)}"))
    mixed = cpu_models_line(rows)
    if mixed:  # a mixed node pool: say so where the figures are read, not only in Environment
        card.append(Markdown(f"**Warning, {mixed}**: speed-ups across them compare machines."))
    if running:
        card.append(Markdown(f"{len(running)} variant run(s) still running: shown once they end."))
    if planned and (missing := planned - len(rows) - len(ended) - len(running)) > 0:
        how = "not started yet" if listed else "not announced yet (running or not started)"
        card.append(Markdown(f"{missing} planned variant(s) {how}."))
    if not rows:
        card.append(Markdown("No successful variant yet."))
    else:
        headers, body = _table_rows(rows)
        card.append(Markdown("## GFLOP/s (median, with its confidence interval) by cpu and n"))
        card.append(Table(body, headers=headers))
        card.append(VegaChart(vega_spec(rows)))
        # Image(bytes), not Image.from_matplotlib: that one imports pyplot for nothing.
        for png in figures.values():
            card.append(Image(png))
    # First what did not give a figure: a sweep whose variants all timed out must say so.
    how = ", ".join(f"{n} {ENDED_TEXT[status]}" for status, n in counts.items() if n)
    card.append(
        Markdown(f"## Variants without a result ({len(ended)})" + (f": {how}" if how else ""))
    )
    if ended:
        card.append(
            Table(
                [
                    [
                        r["cpu"],
                        series_label(r["tensor_dim"], r.get("device") or "cpu"),
                        ENDED_TEXT.get(r.get("status") or "failed", r.get("status")),
                        r.get("reason") or "-",
                        r["run"],
                    ]
                    for r in ended
                ],
                headers=["cpu", "tensor_dim", "status", "reason", "run"],
            )
        )
    noisy = [r for r in rows if r["noisy"]]
    spread = f"samples spread more than {100 * NOISY_IQR_RATIO:g} %"
    card.append(Markdown(f"## Noisy variants ({len(noisy)}): {spread}"))
    if noisy:
        card.append(
            Table(
                [
                    [
                        r["cpu"],
                        series_label(*cell(r)[1:]),
                        f"{100 * r['iqr_ratio']:.1f} %",
                        r["run"],
                    ]
                    for r in noisy
                ],
                headers=["cpu", "tensor_dim", "IQR / median", "run"],
            )
        )
    if baseline:
        card.append(Markdown(f"## Against the baseline `{baseline}` (B / A: above 1 is faster)"))
        card.append(Table(baseline_rows(rows), headers=BASELINE_HEADERS))
    flagged = [r for r in rows if warned(r)]
    card.append(Markdown(f"## Variants with warnings ({len(flagged)}): they still count"))
    if flagged:
        card.append(
            Table(
                [
                    [r["cpu"], series_label(*cell(r)[1:]), "; ".join(r["warnings"]), r["run"]]
                    for r in flagged
                ],
                headers=["cpu", "tensor_dim", "warnings", "run"],
            )
        )
    environment = environment_rows(rows)
    if environment:
        card.append(Markdown("## Environment"))
        card.append(Table(environment, headers=["", "value"]))


def card_html(run) -> str:
    """The analytics card of ``run`` as one self-contained HTML page (scripts and data inline)."""
    from metaflow.cards import get_cards
    from metaflow.plugins.cards.exception import CardNotPresentException

    task = run["start"].task
    try:
        return get_cards(task, id=CARD_ID)[0].get()
    except CardNotPresentException:
        return _local_card_html(task)


def _local_card_html(task) -> str:
    """Find a local card where `card create` wrote it.

    With the local datastore, Metaflow 2.19 writes cards under ``./.metaflow/mf.cards`` of the
    working directory (or under the datastore root itself when METAFLOW_CARD_LOCALROOT is
    set) but ``get_cards`` looks under ``<ds-root>/mf.cards``: the two differ whenever
    METAFLOW_DATASTORE_SYSROOT_LOCAL points elsewhere than the working directory.
    """
    from metaflow.plugins.cards.card_datastore import CardDatastore

    ds_root = task.metadata_dict.get("ds-root", "")
    roots = [CardDatastore.get_storage_root("local"), ds_root, str(Path(ds_root) / "mf.cards")]
    flow, run_id, step, task_id = task.pathspec.split("/")
    for root in filter(None, roots):
        folder = Path(root, flow, "runs", run_id, "steps", step, "tasks", task_id, "cards")
        found = sorted(folder.glob(f"*-{CARD_ID}-*.html"))
        if found:
            return found[-1].read_text(encoding="utf-8")
    raise FileNotFoundError(f"no card {CARD_ID!r} for {task.pathspec} under {roots}")


def write_report(run, folder: str | Path) -> list[Path]:
    """Write speedup.png, efficiency.png and report.html for a SweepAnalyticsFlow run.

    ``run`` is a ``metaflow.Run`` or its pathspec. The PNGs are the run's ``figures``, the
    HTML is its card, which carries its JavaScript (Vega included) and its images inline, so
    it opens offline. Neither pandas nor matplotlib is imported.
    """
    from metaflow import Run, namespace

    if isinstance(run, str):
        namespace(None)
        run = Run(run)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for metric, png in run.data.figures.items():
        path = folder / f"{metric}.png"
        path.write_bytes(png)
        written.append(path)
    path = folder / "report.html"
    path.write_text(card_html(run), encoding="utf-8")
    written.append(path)
    return written
