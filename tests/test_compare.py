"""`python -m torchperf compare`: the pure comparison on known samples, and two real tiny sweeps
of which the second ran while another process kept the measured core busy."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from torchperf import compare

# Enough samples a side for the test to reach significance on a clear change.
MEASURE_SECONDS = "1.0"
# Samples much shorter than a scheduler time slice (n=64: about 1 ms) mostly run between
# preemptions: their median hardly moves under contention, though the shared-cores flag is
# raised. At n=512 a sample spans several slices, so sharing the core halves each one.
TENSOR_DIM = "512"


def cell(samples, env=None, warnings=()):
    return {
        "run": "TorchPerfFlow/1",
        "samples": samples,
        "gflops": sorted(samples)[len(samples) // 2],
        "env": env or {},
        "warnings": list(warnings),
    }


def test_compare_cells_gives_slower_faster_same_and_missing():
    base = [100.0 + 0.1 * i for i in range(20)]
    a = {(1, 64, "cpu"): cell(base), (2, 64, "cpu"): cell(base), (4, 64, "cpu"): cell(base)}
    b = {
        (1, 64, "cpu"): cell([0.5 * x for x in base]),
        (2, 64, "cpu"): cell([1.5 * x for x in base]),
        (4, 64, "cpu"): cell([1.01 * x for x in base]),
        (8, 64, "cpu"): cell(base),
    }
    entries = {e["cpu"]: e for e in compare.compare_cells(a, b)}
    assert {cpu: e["verdict"] for cpu, e in entries.items()} == {
        1: "slower",
        2: "faster",
        4: "same",  # 1 %: below the 5 % threshold
        8: "missing",
    }
    assert entries[1]["ratio"] == pytest.approx(0.5, rel=0.01)
    assert entries[1]["ratio_ci"][0] <= entries[1]["ratio"] <= entries[1]["ratio_ci"][1]
    assert compare.exit_status(list(entries.values())) == 1
    # A lower threshold counts the 1 % change.
    small = compare.compare_cells(a, b, threshold=0.005)
    assert {e["cpu"]: e["verdict"] for e in small}[4] == "faster"


def test_environment_warnings_name_the_torch_version_and_cpu_model():
    a = {(1, 64, "cpu"): cell([1.0], env={"torch_version": "2.12.0", "cpu_model": "X"})}
    b = {(1, 64, "cpu"): cell([1.0], env={"torch_version": "2.13.0", "cpu_model": "Y"})}
    found = compare.environment_warnings(a, b)
    assert any("torch_version" in w and "2.12.0 -> 2.13.0" in w for w in found)
    assert any("cpu_model" in w for w in found)
    assert compare.environment_warnings(a, a) == []


def test_a_sweep_whose_variants_ran_on_two_cpu_models_is_flagged_in_one_line(
    tmp_path, monkeypatch, capsys
):
    base = [100.0 + 0.1 * i for i in range(20)]
    mixed = {
        (1, 64, "cpu"): cell(base, env={"cpu_model": "Xeon 8481C"}),
        (2, 64, "cpu"): cell(base, env={"cpu_model": "EPYC 9B14"}),
    }
    alike = {key: cell(base, env={"cpu_model": "Xeon 8481C"}) for key in mixed}
    sweeps = {"sweep_a": alike, "sweep_b": mixed}
    monkeypatch.setattr(compare, "load_sweep", sweeps.__getitem__)
    compare.run("sweep_a", "sweep_b", out=tmp_path)
    flagged = [line for line in capsys.readouterr().err.splitlines() if "CPU models" in line]
    assert flagged == [
        "warning: sweep sweep_b: mixed CPU models: the variants ran on 2: "
        "EPYC 9B14 (1); Xeon 8481C (1)"
    ]
    written = json.loads((tmp_path / "compare.json").read_text())["warnings"]
    assert [w for w in written if "CPU models" in w] == [flagged[0].removeprefix("warning: ")]
    assert compare.mixed_models_warnings({"sweep_a": alike}) == []


def test_outputs_are_a_json_file_and_a_page_with_a_chart(tmp_path):
    base = [100.0 + i for i in range(10)]
    entries = compare.compare_cells({(1, 64, "cpu"): cell(base)}, {(1, 64, "cpu"): cell(base)})
    written = compare.write_outputs(tmp_path, entries, "a", "b", [], 0.05, 0.05)
    data = json.loads((tmp_path / "compare.json").read_text())
    assert data["cells"][0]["verdict"] == "same" and data["exit_status"] == 0
    page = (tmp_path / "compare.html").read_text()
    assert "data:image/png;base64," in page and "B / A" in page
    assert [p.name for p in written] == ["compare.json", "compare.html"]


# ---- Two real sweeps ---------------------------------------------------------------------


def sweep(sweep_dir, *extra):
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "sweep_deployer.py"),
            "-m",
            "cpu=1",
            f"tensor_dim={TENSOR_DIM}",
            f"measure_seconds={MEASURE_SECONDS}",
            "live_analytics=false",
            f"hydra.sweep.dir={sweep_dir}",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads((sweep_dir / "summary.json").read_text())


def compare_command(*arguments):
    return subprocess.run(
        [sys.executable, "-m", "torchperf", "compare", *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.getcwd(),  # the test datastore
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory):
    """Sweep A alone; sweep B while a busy loop holds the core a cpu=1 variant is pinned to."""
    core = min(os.sched_getaffinity(0))  # bench.choose_cores takes the lowest allowed core
    quiet = sweep(tmp_path_factory.mktemp("quiet"))
    competitor = subprocess.Popen(
        [sys.executable, "-c", f"import os\nos.sched_setaffinity(0, [{core}])\nwhile True: pass"]
    )
    try:
        # The analytics card compares the variant with sweep A as it arrives.
        busy = sweep(tmp_path_factory.mktemp("busy"), f"baseline={quiet['tag']}")
    finally:
        competitor.kill()
        competitor.wait()
    return {"a": quiet, "b": busy, "core": core}


@pytest.mark.e2e
@pytest.mark.flow
def test_a_sweep_that_shared_its_core_compares_slower_and_flagged(two_sweeps, tmp_path):
    from metaflow import Run, namespace

    a, b = two_sweeps["a"], two_sweeps["b"]
    namespace(None)
    (entry_b,) = b["variants"]
    contended = Run(entry_b["run"]).data.result
    assert contended["affinity"] == [two_sweeps["core"]], "the variant ran on another core"
    assert contended["shared"] and contended["cpu_utilization"] < 0.85
    assert any(w.startswith("shared cores") for w in contended["warnings"])
    assert any(w.startswith("shared cores") for w in entry_b["warnings"])  # summary.json

    done = compare_command(a["tag"], b["tag"], "--out", str(tmp_path))
    assert done.returncode == 1, done.stdout + done.stderr
    data = json.loads((tmp_path / "compare.json").read_text())
    (cell_,) = data["cells"]
    assert cell_["verdict"] == "slower" and cell_["ratio"] < 0.95
    assert any(w.startswith("shared cores") for w in cell_["warnings_b"])
    assert "slower" in done.stdout
    assert (tmp_path / "compare.html").stat().st_size > 1000


@pytest.mark.e2e
@pytest.mark.flow
def test_a_sweep_compared_with_itself_is_the_same(two_sweeps, tmp_path):
    tag = two_sweeps["a"]["tag"]
    done = compare_command(tag, tag, "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads((tmp_path / "compare.json").read_text())
    assert [c["verdict"] for c in data["cells"]] == ["same"]
    assert data["warnings"] == []


@pytest.mark.flow
def test_an_unknown_tag_is_refused_in_one_line(tmp_path):
    done = compare_command("sweep_nothing_here", "sweep_nothing_either", "--out", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: no successful TorchPerfFlow run carries the tag 'sweep_nothing_here'"
    )
    assert not (tmp_path / "compare.json").exists()


def test_a_malformed_tag_is_refused_in_one_line():
    done = compare_command("Not-A-Tag", "b")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: tag='Not-A-Tag'")


@pytest.mark.e2e
@pytest.mark.flow
def test_the_analytics_card_shows_the_variant_against_its_baseline(two_sweeps):
    from metaflow import Run, namespace

    from tests.conftest import card_text
    from torchperf.report import card_html

    namespace(None)
    analytics = Run(two_sweeps["b"]["analytics_run"])
    assert analytics.data.config["baseline"] == two_sweeps["a"]["tag"]
    (row,) = analytics.data.results.to_dict("records")
    assert row["baseline"]["verdict"] == "slower" and row["baseline"]["ratio"] < 0.95
    text = card_text(card_html(analytics))
    assert f"Against the baseline `{two_sweeps['a']['tag']}`" in text and "slower" in text


def test_an_unknown_baseline_is_refused_before_anything_runs(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "sweep_deployer.py"),
            "-m",
            "cpu=1",
            "baseline=sweep_no_such_sweep",
            f"hydra.sweep.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "error: no successful TorchPerfFlow run carries the tag 'sweep_no_such_sweep'"
    )
    assert not (tmp_path / "summary.json").exists()


def test_the_default_output_folder_is_one_git_ignores():
    folder = compare.output_folder("sweep_a", "sweep_b")
    assert folder.parts[0] == "comparisons" and len(folder.parts) == 2  # not the project root
    ignored = subprocess.run(["git", "check-ignore", "-q", str(folder / "compare.json")], cwd=ROOT)
    assert ignored.returncode == 0
