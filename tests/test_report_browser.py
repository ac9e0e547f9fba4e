"""The sweep report opened in a real headless Chromium, offline: table and both charts render."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.test_analytics_flow import run_analytics

CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.flow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install chromium)"),
]

# Appended to a copy of the report: once the page has drawn, it writes what it sees into the
# DOM that --dump-dom prints. Polls because the card renders after load, asynchronously.
PROBE = """
<script>
(function probe(tries) {
  const images = [...document.querySelectorAll("img")]
    .filter((img) => img.src.startsWith("data:image/png"));
  const charts = [...document.querySelectorAll("svg.marks")];
  const ready = images.length >= 2 && images.every((img) => img.complete) && charts.length;
  if (!ready && tries > 0) { setTimeout(() => probe(tries - 1), 100); return; }
  document.body.setAttribute("data-probe", JSON.stringify({
    images: images.map((img) => [img.naturalWidth, img.naturalHeight]),
    charts: charts.map((svg) => {
      const box = svg.getBoundingClientRect();
      const lines = svg.querySelectorAll(".mark-line path").length;
      return {width: box.width, height: box.height, lines};
    }),
    tables: [...document.querySelectorAll("table")].map((table) => table.innerText),
    text: document.body.innerText,
  }));
})(100);
</script>
"""


def render(html_path, tmp_path) -> dict:
    """Open the page in headless Chromium, without network, and return what the probe saw."""
    probed = tmp_path / "probed.html"
    probed.write_text(html_path.read_text(encoding="utf-8") + PROBE, encoding="utf-8")
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1280,2400",
        # Fast-forwards timers so that the probe's polling costs no wall time.
        "--virtual-time-budget=20000",
        "--dump-dom",
        probed.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    (found,) = re.findall(r'data-probe="([^"]*)"', done.stdout)
    return json.loads(found.replace("&quot;", '"').replace("&amp;", "&"))


@pytest.fixture(scope="module")
def report(tiny_sweep, tmp_path_factory):
    from torchperf.report import write_report

    folder = tmp_path_factory.mktemp("report")
    run = run_analytics(tiny_sweep["tag"], planned=len(tiny_sweep["runs"]))
    write_report(run, folder)
    return folder


def test_report_needs_no_network(report):
    html = (report / "report.html").read_text(encoding="utf-8")
    assert not re.search(r'<(script|link|img)[^>]+(src|href)="https?:', html)


def test_table_and_both_charts_render_offline(tiny_sweep, report, tmp_path):
    seen = render(report / "report.html", tmp_path)
    done = len(tiny_sweep["runs"])
    assert f"{done} of {done} variants done (0 failed)" in seen["text"]
    # The cpu x tensor_dim table: a header row plus one row per cpu.
    cpus = {cpu for cpu, _ in tiny_sweep["runs"]}
    (table,) = [t for t in seen["tables"] if t.startswith("cpu \\ tensor_dim")]
    assert len(table.strip().splitlines()) == 1 + len(cpus)
    # The Vega chart drew one line per tensor_dim into a visible svg.
    (chart,) = seen["charts"]
    assert chart["width"] > 100 and chart["height"] > 100
    assert chart["lines"] == len({dim for _, dim in tiny_sweep["runs"]})
    # Both matplotlib figures decoded with a real size.
    assert len(seen["images"]) == 2
    assert all(width > 100 and height > 100 for width, height in seen["images"])
