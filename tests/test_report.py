"""What the analytics card and the report show, built from rows as the analytics flow has them:
the card's components, the Vega chart's spec and the matplotlib figures."""

from __future__ import annotations

import json
import math

import pytest

from tests.test_analytics import make_row
from torchperf import analytics, report

SHARED = "shared cores: the process got 60 % of 2 thread(s) x wall time while measuring"


def with_ci(row: dict, low: float, high: float, level: float = 0.96, **extra) -> dict:
    return {**row, "gflops_ci_low": low, "gflops_ci_high": high, "gflops_ci_level": level, **extra}


ROWS = analytics.derive(
    [
        with_ci(make_row(1, 256, 100.0), 98.0, 102.0),
        with_ci(make_row(2, 256, 180.0), 170.0, 190.0, warnings=[SHARED]),
        with_ci(make_row(1, 512, 110.0), 109.0, 111.0),
        with_ci(make_row(2, 512, 200.0), 196.0, 204.0),
        with_ci(make_row(3, 512, 290.0), 280.0, 300.0),
    ]
)
ENDED = [
    {"run": "TorchPerfFlow/7", "cpu": 1, "tensor_dim": 1024, "device": "cpu", "status": "timeout"}
    | {"reason": "stopped after 30 s", "created_at": "2025"},
    {"run": "TorchPerfFlow/8", "cpu": 2, "tensor_dim": 1024, "device": "cpu", "status": "timeout"}
    | {"reason": "stopped after 30 s", "created_at": "2025"},
    {"run": "TorchPerfFlow/9", "cpu": 3, "tensor_dim": 1024, "device": "cpu"}
    | {"status": "cancelled", "reason": "interrupted", "created_at": "2025"},
]


class FakeCard(list):
    """current.card[...] as fill_card uses it: components appended in order."""


def card_json(rows, ended=(), planned=None, running=()) -> str:
    card = FakeCard()
    report.fill_card(
        card,
        tag="sweep_x",
        results=analytics.to_frame(rows),
        ended=ended,
        running=running,
        planned=planned,
        figures={},
    )
    return json.dumps([component.render() for component in card])


def test_a_sweep_whose_variants_all_timed_out_says_so_with_the_reasons():
    shown = card_json([], ENDED[:2], planned=2)
    assert "0 of 2 variants done (2 timed out)" in shown
    assert "0 failed" not in shown and "Failed variants (0)" not in shown
    assert "not finished yet" not in shown and "still running" not in shown
    assert "Variants without a result (2): 2 timed out" in shown
    assert shown.count("stopped after 30 s") == 2


def test_cancelled_variants_are_counted_and_listed_apart_from_failed_ones():
    failed = {**ENDED[0], "status": "failed", "reason": "RuntimeError: boom", "cpu": 4}
    shown = card_json(ROWS, [*ENDED, failed], planned=len(ROWS) + 5)
    assert "variants done (1 failed, 2 timed out, 1 cancelled)" in shown
    assert "interrupted" in shown and "RuntimeError: boom" in shown
    assert "1 planned variant(s) not started yet" in shown


def test_a_table_cell_names_its_warning():
    shown = card_json(ROWS)
    assert "(shared cores)" in shown
    assert "(warning)" not in shown


def test_the_environment_says_what_a_missing_value_means():
    rows = [{**row, "env": {**row["env"], "image": None, "host": "box"}} for row in ROWS]
    body = dict(report.environment_rows(rows))
    assert body["container image"] == "none (not run from an image)"
    assert "None" not in json.dumps(report.environment_rows(rows))


def test_the_cpu_axis_has_a_tick_at_each_measured_core_count_only():
    spec = report.vega_spec(ROWS)
    axis = spec["encoding"]["x"]["axis"]
    assert axis["values"] == [1, 2, 3] and all(type(v) is int for v in axis["values"])
    assert axis["format"] == "d"


def test_every_point_of_the_vega_chart_carries_its_interval():
    spec = report.vega_spec(ROWS)
    values = spec["data"]["values"]
    assert [(v["low"], v["high"]) for v in values] == [
        (r["gflops_ci_low"], r["gflops_ci_high"]) for r in ROWS
    ]
    (bars,) = [layer for layer in spec["layer"] if layer["mark"]["type"] == "errorbar"]
    assert bars["encoding"]["y"]["field"] == "low" and bars["encoding"]["y2"]["field"] == "high"
    # A run measured before intervals were recorded gives null, which JSON can carry.
    old = {**ROWS[0], "gflops_ci_low": math.nan, "gflops_ci_high": math.nan}
    assert "NaN" not in json.dumps(report.vega_spec([old]), allow_nan=False)


def matplotlib_lines(figure) -> dict[str, tuple]:
    """Each labelled error-bar line of a figure: label -> (colour, x, y, bar bottoms, tops)."""
    from matplotlib.colors import to_hex

    (axes,) = figure.axes
    lines = {}
    for container in axes.containers:
        line, _, (bars,) = container
        segments = bars.get_segments()
        lines[container.get_label()] = (
            to_hex(line.get_color()),
            list(line.get_xdata()),
            list(line.get_ydata()),
            [s[0][1] for s in segments],
            [s[1][1] for s in segments],
        )
    return lines


def test_one_colour_per_tensor_size_in_the_vega_chart_and_the_figures():
    scale = report.vega_spec(ROWS)["encoding"]["color"]["scale"]
    vega = dict(zip(scale["domain"], scale["range"], strict=True))
    assert set(vega) == {"n=256", "n=512"} and len(set(vega.values())) == 2
    for metric in report.METRICS:
        drawn = matplotlib_lines(report.scaling_figure(ROWS, metric))
        assert {label: line[0] for label, line in drawn.items()} == vega


@pytest.mark.parametrize("metric", report.METRICS)
def test_the_scaling_figures_start_at_zero_and_draw_each_points_interval(metric):
    figure = report.scaling_figure(ROWS, metric)
    (axes,) = figure.axes
    assert axes.get_ylim()[0] == 0
    drawn = matplotlib_lines(figure)
    by_cell = {(r["cpu"], f"n={r['tensor_dim']}"): r for r in ROWS}
    for label, (_, xs, ys, bottoms, tops) in drawn.items():
        base = by_cell[(1, label)]
        for cpu, y, bottom, top in zip(xs, ys, bottoms, tops, strict=True):
            row = by_cell[(cpu, label)]
            # The interval of median / base median that both intervals allow, around the point.
            per_cpu = y / row["speedup"]
            assert bottom == pytest.approx(row["gflops_ci_low"] / base["gflops_ci_high"] * per_cpu)
            assert top == pytest.approx(row["gflops_ci_high"] / base["gflops_ci_low"] * per_cpu)
            assert bottom < y < top
    assert sorted(drawn) == ["n=256", "n=512"]


def test_the_pngs_are_drawn(tmp_path):
    pngs = report.scaling_pngs(ROWS)
    for metric, png in pngs.items():
        assert png.startswith(b"\x89PNG")
        (tmp_path / f"{metric}.png").write_bytes(png)
