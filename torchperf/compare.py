"""Two sweeps side by side: per (cpu, tensor_dim, device) cell the ratio B / A with its interval,
Mann-Whitney U on the stored samples and a verdict (faster, slower, same).

``compare_cells`` and the writers are pure; ``load_sweep`` is the one seam that reads Metaflow.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping
from pathlib import Path

from torchperf import display, fingerprint, stats
from torchperf.errors import ConfigError
from torchperf.plan import check_tag
from torchperf.result import Result

DEFAULT_THRESHOLD = 0.05  # a change smaller than 5 % is "same", however significant
DEFAULT_ALPHA = 0.05  # the significance level of the Mann-Whitney test
MISSING = "missing"  # a cell that only one of the two sweeps measured
COMPARISONS = Path("comparisons")  # the default outputs' folder (in .gitignore)


def load_sweep(tag: str, flow_name: str = "TorchPerfFlow") -> dict[tuple, dict]:
    """The latest successful run of each (cpu, tensor_dim, device) cell tagged ``tag``:
    its samples, figure, fingerprint and warnings. ConfigError where the tag has none."""
    from torchperf import runs

    check_tag(tag)
    cells: dict[tuple, dict] = {}
    for run in sorted(runs.sweep_runs(tag, flow_name), key=lambda r: r.created_at):
        if not run.successful:  # the newest run of a cell wins
            continue
        config, result = run.data.config, Result.from_dict(run.data.result)
        cells[cell_key(config)] = cell_of(run.pathspec, result)
    if not cells:
        raise ConfigError(f"no successful {flow_name} run carries the tag {tag!r}")
    return cells


def cell_key(config: Mapping) -> tuple:
    """A variant's cell: (cpu, tensor_dim, device); runs from before devices ran on the CPU."""
    return int(config["cpu"]), int(config["tensor_dim"]), str(config.get("device", "cpu"))


def cell_of(run: str | None, result: Result) -> dict:
    """What a comparison keeps of one run: its samples, figure, fingerprint and warnings."""
    return {
        "run": run,
        "samples": list(result.gflops_samples),
        "gflops": result.gflops,
        "env": result.env.to_dict(),
        "warnings": list(result.warnings),
    }


def compare_cells(
    a: Mapping[tuple, dict],
    b: Mapping[tuple, dict],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    alpha: float = DEFAULT_ALPHA,
) -> list[dict]:
    """One entry per cell of either sweep, in (tensor_dim, device, cpu) order."""
    entries = []
    for key in sorted(set(a) | set(b), key=lambda k: (k[1], k[2], k[0])):
        cpu, tensor_dim, device = key
        entry = {"cpu": cpu, "tensor_dim": tensor_dim, "device": device}
        left, right = a.get(key), b.get(key)
        entry["run_a"] = left and left["run"]
        entry["run_b"] = right and right["run"]
        entry["gflops_a"] = left and left["gflops"]
        entry["gflops_b"] = right and right["gflops"]
        entry["warnings_a"] = left.get("warnings", []) if left else []
        entry["warnings_b"] = right.get("warnings", []) if right else []
        if left is None or right is None:
            entries.append(entry | {"verdict": MISSING})
            continue
        ratio, interval = stats.ratio_ci(left["samples"], right["samples"])
        test = stats.mann_whitney(left["samples"], right["samples"])
        entries.append(
            entry
            | {
                "ratio": ratio,
                "ratio_ci": [interval.low, interval.high],
                "ratio_ci_level": interval.level,
                "p_value": test.p_value,
                "verdict": stats.verdict(ratio, test.p_value, threshold=threshold, alpha=alpha),
            }
        )
    return entries


def environment_warnings(a: Mapping[tuple, dict], b: Mapping[tuple, dict]) -> list[str]:
    """The fingerprint fields (CPU model, torch version, ...) the two sweeps disagree on."""

    def values(cells, key):
        return sorted({str(cell["env"].get(key)) for cell in cells.values()})

    found = []
    for key in fingerprint.IDENTITY:
        left, right = values(a, key), values(b, key)
        if left != right:
            found.append(f"{key} differs: {', '.join(left)} -> {', '.join(right)}")
    return found


def mixed_models_warnings(sweeps: Mapping[str, Mapping[tuple, dict]]) -> list[str]:
    """A line for each sweep (by tag) whose variants ran on different CPU models."""
    from torchperf.analytics import cpu_models_line

    found = []
    for tag, cells in sweeps.items():
        line = cpu_models_line(cells.values())
        if line:
            found.append(f"sweep {tag}: {line}")
    return found


def exit_status(entries: list[dict]) -> int:
    """For CI: 1 when any cell is slower, else 0."""
    return 1 if any(entry["verdict"] == stats.SLOWER for entry in entries) else 0


def _ratio_text(entry: dict) -> str:
    if entry["verdict"] == MISSING:
        return "-"
    low, high = entry["ratio_ci"]
    return display.figure(entry["ratio"], (low, high, entry["ratio_ci_level"]), unit="x")


def table_rows(entries: list[dict]) -> list[list[str]]:
    """The comparison as text cells: one row per cell."""
    rows = []
    for e in entries:
        flags = "; ".join(
            f"{side}: {display.warning_name(w)}"
            for side in ("a", "b")
            for w in e[f"warnings_{side}"]
        )
        rows.append(
            [
                str(e["cpu"]),
                str(e["tensor_dim"]),
                e["device"],
                "-" if e["gflops_a"] is None else f"{e['gflops_a']:.1f}",
                "-" if e["gflops_b"] is None else f"{e['gflops_b']:.1f}",
                _ratio_text(e),
                "-" if "p_value" not in e else f"{e['p_value']:.2g}",
                e["verdict"],
                flags,
            ]
        )
    return rows


HEADERS = ["cpu", "n", "device", "A GFLOP/s", "B GFLOP/s", "B / A", "p", "verdict", "warnings"]
VERDICT_STYLE = {"faster": "green", "slower": "red", "same": "", MISSING: "yellow"}


def print_table(entries: list[dict], tag_a: str, tag_b: str, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"B = {tag_b} against A = {tag_a}")
    for header in HEADERS:
        table.add_column(header, justify="left" if header in ("verdict", "warnings") else "right")
    for entry, row in zip(entries, table_rows(entries), strict=True):
        style = VERDICT_STYLE[entry["verdict"]]
        row[7] = f"[{style}]{row[7]}[/]" if style else row[7]
        table.add_row(*row)
    console.print(table)


def ratio_png(entries: list[dict], threshold: float) -> bytes:
    """B / A per cell with its interval, the line of no change and the threshold band."""
    from matplotlib.figure import Figure

    shown = [e for e in entries if e["verdict"] != MISSING]
    figure = Figure(figsize=(7, 0.5 * len(shown) + 1.5), layout="constrained")
    axes = figure.add_subplot()
    colors = {"faster": "tab:green", "slower": "tab:red", "same": "tab:grey"}
    for y, e in enumerate(shown):
        low, high = e["ratio_ci"]
        axes.errorbar(
            e["ratio"],
            y,
            xerr=[[e["ratio"] - low], [high - e["ratio"]]],
            fmt="o",
            color=colors[e["verdict"]],
            capsize=3,
        )
    axes.axvline(1.0, color="black", linewidth=1)
    axes.axvspan(1 - threshold, 1 + threshold, color="grey", alpha=0.15, label="threshold")
    axes.set_yticks(range(len(shown)))
    axes.set_yticklabels([f"cpu={e['cpu']} n={e['tensor_dim']} {e['device']}" for e in shown])
    axes.set_xlabel("B / A (GFLOP/s; above 1: B faster)")
    axes.legend(loc="best")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def html_report(
    entries: list[dict], tag_a: str, tag_b: str, warnings: list[str], threshold: float
) -> str:
    """One self-contained page: the table and the chart (an inline PNG)."""
    png = base64.b64encode(ratio_png(entries, threshold)).decode()
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADERS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
        for row in table_rows(entries)
    )
    notes = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>torchperf compare {html.escape(tag_a)} {html.escape(tag_b)}</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:right}</style>"
        f"</head><body><h1>B = {html.escape(tag_b)} against A = {html.escape(tag_a)}</h1>"
        f"<p>faster or slower: significant (Mann-Whitney U) and beyond {100 * threshold:g} %."
        "</p>"
        + (f"<h2>Warnings</h2><ul>{notes}</ul>" if notes else "")
        + f"<table><tr>{head}</tr>{body}</table>"
        f"<img alt='B / A per cell' src='data:image/png;base64,{png}'></body></html>"
    )


def write_outputs(
    folder: Path,
    entries: list[dict],
    tag_a: str,
    tag_b: str,
    warnings: list[str],
    threshold: float,
    alpha: float,
) -> list[Path]:
    """compare.json (machine-readable) and compare.html in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "a": tag_a,
        "b": tag_b,
        "threshold": threshold,
        "alpha": alpha,
        "warnings": warnings,
        "cells": entries,
        "exit_status": exit_status(entries),
    }
    json_path, html_path = folder / "compare.json", folder / "compare.html"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    html_path.write_text(html_report(entries, tag_a, tag_b, warnings, threshold), "utf-8")
    return [json_path, html_path]


def output_folder(tag_a: str, tag_b: str) -> Path:
    """Where a comparison is written unless --out says: under comparisons/, which git ignores."""
    return COMPARISONS / f"{tag_a}_vs_{tag_b}"


def run(
    tag_a: str,
    tag_b: str,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    alpha: float = DEFAULT_ALPHA,
    out: Path | None = None,
) -> int:
    """The command: read both sweeps, print, write the files; the exit status."""
    import sys

    if not 0 <= threshold < 1:
        raise ConfigError(f"--threshold={threshold:g} must be a share in [0, 1), e.g. 0.05")
    if not 0 < alpha < 1:
        raise ConfigError(f"--alpha={alpha:g} must lie in (0, 1), e.g. 0.05")
    a, b = load_sweep(tag_a), load_sweep(tag_b)
    entries = compare_cells(a, b, threshold=threshold, alpha=alpha)
    warnings = environment_warnings(a, b)
    for warning in warnings:
        print(f"warning: the sweeps ran in different environments: {warning}", file=sys.stderr)
    mixed = mixed_models_warnings({tag_a: a, tag_b: b} if tag_a != tag_b else {tag_a: a})
    for warning in mixed:
        print(f"warning: {warning}", file=sys.stderr)
    warnings += mixed
    print_table(entries, tag_a, tag_b)
    folder = out or output_folder(tag_a, tag_b)
    for path in write_outputs(folder, entries, tag_a, tag_b, warnings, threshold, alpha):
        print(f"written: {path}")
    return exit_status(entries)
