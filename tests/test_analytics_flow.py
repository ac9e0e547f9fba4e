"""SweepAnalyticsFlow over real tiny TorchPerfFlow runs: results, card, no double count."""

from __future__ import annotations

import base64
import json
import re

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.flow


def run_analytics(tag: str, planned: int | None = None):
    """One SweepAnalyticsFlow run as the sweep's local backend starts it."""
    from metaflow import Runner

    from torchperf.plan import analytics_branch

    config = {"tag": tag, "planned": planned, "wait_seconds": 5}
    with Runner(
        str(ROOT / "sweep_analytics.py"),
        branch=analytics_branch(tag),
        config_value=[("config", config)],
    ).run(tags=[tag]) as running:
        assert running.status == "successful", running.stderr
        return running.run


@pytest.fixture(scope="module")
def analytics_runs(tiny_sweep):
    """Two analytics runs in a row over the same sweep, as after a repeated trigger."""
    planned = len(tiny_sweep["runs"]) + 1
    first = run_analytics(tiny_sweep["tag"], planned)
    second = run_analytics(tiny_sweep["tag"], planned)
    return first, second


def test_results_hold_one_row_per_successful_variant(tiny_sweep, analytics_runs):
    results = analytics_runs[0].data.results
    runs = tiny_sweep["runs"]
    assert sorted(zip(results.cpu, results.tensor_dim, strict=True)) == sorted(runs)
    assert set(results.run) == {run.pathspec for run in runs.values()}


def test_results_carry_each_runs_figures(tiny_sweep, analytics_runs):
    for row in analytics_runs[0].data.results.to_dict("records"):
        result = tiny_sweep["runs"][(row["cpu"], row["tensor_dim"])].data.result
        assert row["gflops"] == pytest.approx(result["gflops"])
        assert row["iqr_ratio"] == pytest.approx(result["iqr_ratio"])
        assert row["noisy"] == result["noisy"]
        assert [row["gflops_ci_low"], row["gflops_ci_high"]] == result["gflops_ci"]
        assert row["warnings"] == result["warnings"]
        assert row["env"]["torch_version"] == result["env"]["torch_version"]


def test_speedup_and_efficiency_follow_from_gflops(analytics_runs):
    results = analytics_runs[0].data.results
    smallest = results.cpu.min()
    base = results[results.cpu == smallest].set_index("tensor_dim").gflops
    for row in results.to_dict("records"):
        speedup = row["gflops"] / base[row["tensor_dim"]]
        assert row["speedup"] == pytest.approx(speedup)
        assert row["efficiency"] == pytest.approx(speedup / (row["cpu"] / smallest))


def test_a_repeated_trigger_reads_nothing_and_counts_nothing_twice(tiny_sweep, analytics_runs):
    first, second = analytics_runs
    assert second.data.stats["listed"] == len(tiny_sweep["runs"])
    assert second.data.stats["loaded"] == 0
    assert len(second.data.rows) == len(tiny_sweep["runs"])
    assert second.data.results.run.tolist() == first.data.results.run.tolist()


def test_nothing_failed_or_left_running(analytics_runs):
    assert analytics_runs[1].data.ended == []
    assert analytics_runs[1].data.running == []


def card_data(html: str) -> str:
    """The card's components as JSON text: Metaflow embeds them base64-encoded in the page."""
    (encoded,) = re.findall(r'window.__MF_DATA__\["[^"]+"\] = "([^"]+)"', html)
    return base64.b64decode(encoded).decode("utf-8")


def test_card_shows_progress_table_and_charts(tiny_sweep, analytics_runs):
    from torchperf.report import card_html

    data = card_data(card_html(analytics_runs[1]))
    done = len(tiny_sweep["runs"])
    assert f"{done} of {done + 1} variants done (0 failed)" in data
    components = json.loads(data)["components"]
    types = [c["type"] for c in walk(components)]
    assert types.count("table") >= 1
    assert types.count("vegaChart") == 1
    assert types.count("image") == 2  # speed-up and efficiency
    (chart,) = [c for c in walk(components) if c["type"] == "vegaChart"]
    assert chart["spec"]["encoding"]["x"]["title"] == "cpu (cores)"
    assert len(chart["spec"]["data"]["values"]) == done
    assert "% CI" in data and "Variants with warnings" in data and "Environment" in data


def walk(components):
    """Every component of a card, nested ones included."""
    for component in components:
        yield component
        yield from walk(component.get("contents") or [])


def test_write_report_writes_pngs_and_one_html(analytics_runs, tmp_path):
    from torchperf.report import REPORT_FILES, write_report

    written = write_report(analytics_runs[1].pathspec, tmp_path)
    assert sorted(path.name for path in written) == sorted(REPORT_FILES)
    for path in written:
        assert path.stat().st_size > 1000, path
    assert (tmp_path / "speedup.png").read_bytes().startswith(b"\x89PNG")


def test_the_card_is_drawn_once_without_live_view_data(analytics_runs):
    from metaflow.cards import get_cards

    (card,) = get_cards(analytics_runs[1]["start"].task, id="sweep")
    assert card.type == "torchperf_sweep"
    # A runtime-updatable card gets a second process at task end, which writes this data.
    assert card.get_data() is None


def test_the_card_type_ships_in_the_code_package():
    import subprocess
    import sys

    listed = subprocess.run(
        [sys.executable, str(ROOT / "sweep_analytics.py"), "--no-pylint", "package", "list"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # Metaflow prints the list there
        text=True,
        check=True,
    ).stdout
    card_type = ROOT / "metaflow_extensions/torchperf/plugins/cards/sweep_card/__init__.py"
    assert str(card_type) in listed.splitlines()


def test_report_finds_a_card_where_card_create_wrote_it(analytics_runs):
    # Guards report.py's two private card names (torchperf/private_api.py).
    from metaflow.cards import get_cards
    from metaflow.plugins.cards.exception import CardNotPresentException

    from torchperf.report import CARD_ID, _local_card_html

    task = analytics_runs[1]["start"].task
    # The fallback's folder (CardDatastore.get_storage_root) holds the card Metaflow returns.
    assert _local_card_html(task) == get_cards(task, id=CARD_ID)[0].get()
    # A task without the card raises what card_html catches to fall back.
    with pytest.raises(CardNotPresentException):
        get_cards(analytics_runs[1]["end"].task, id=CARD_ID)


def analytics_events(tmp_path, others: int, *extra: str) -> dict:
    """benchmarks/analytics_events.py at a small size: per-event requests, bytes and CPU."""
    import os
    import subprocess
    import sys

    out = tmp_path / f"events_{others}{'_'.join(extra)}.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "analytics_events.py")]
    command += ["--events", "20", "--others", str(others), "--json", str(out), *extra]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=os.environ)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text())


def per_event(summary: dict, key: str) -> list:
    return [entry[key] for entry in summary["per_event"]]


def test_an_analytics_event_costs_the_same_requests_however_many_runs_other_sweeps_left(
    tmp_path,
):
    # GIVEN the metadata service on loopback, with no other runs, then 200 of other sweeps
    alone, crowded = analytics_events(tmp_path, 0), analytics_events(tmp_path, 200)
    # THEN each of 20 announced events reads what it read without them
    assert per_event(crowded, "requests") == per_event(alone, "requests")
    for mine, theirs in zip(per_event(crowded, "bytes"), per_event(alone, "bytes"), strict=True):
        assert mine <= 1.01 * theirs
    # ... and the sweep's own size does not add any: the last event costs what the second did
    assert per_event(crowded, "requests")[-1] == per_event(crowded, "requests")[1]
    # ... and the final aggregation, which lists the tag, holds every variant with its figure
    assert alone["final"]["right"] and crowded["final"]["right"]
    assert crowded["final"]["variants"] == crowded["events"]


def test_listing_the_tag_on_every_event_would_read_every_run_other_sweeps_left(tmp_path):
    # The measure above can tell: listing answers grow with other sweeps' runs.
    alone = analytics_events(tmp_path, 0, "--listing")
    crowded = analytics_events(tmp_path, 200, "--listing")
    assert min(per_event(crowded, "bytes")) > 2 * max(per_event(alone, "bytes"))


def test_an_analytics_run_started_by_an_event_reads_the_announced_run_alone(tiny_sweep):
    import os

    from metaflow import Runner

    from torchperf.analytics import EVENT_PAYLOAD_PREFIX
    from torchperf.plan import analytics_branch, new_sweep_tag

    # GIVEN an event that announces one of the sweep's runs, read under a tag of its own (so
    # that listing that tag would find nothing)
    announced = tiny_sweep["runs"][(1, 32)].pathspec
    tag = new_sweep_tag()
    payload = {f"{EVENT_PAYLOAD_PREFIX}event_torchperf": json.dumps({"run": announced})}
    with Runner(
        str(ROOT / "sweep_analytics.py"),
        branch=analytics_branch(tag),
        config_value=[("config", {"tag": tag, "wait_seconds": 5})],
        env={**os.environ, **payload},
    ).run(tags=[tag]) as running:
        assert running.status == "successful", running.stderr
        run = running.run
    # THEN it read that run by its pathspec, listing nothing
    assert run.data.stats["listed"] == 0 and run.data.stats["loaded"] == 1
    assert list(run.data.rows) == [announced]


def test_the_flow_writes_the_versioned_result_schema(tiny_sweep):
    from torchperf.result import SCHEMA_VERSION, Result

    for run in tiny_sweep["runs"].values():
        stored = run.data.result
        assert stored["schema_version"] == SCHEMA_VERSION
        assert Result.from_dict(stored).to_dict() == stored  # nothing lost, nothing added
