"""A whole sweep whose variants all time out: what the piped terminal output, summary.json and
report.html say of it."""

import pytest

from tests.conftest import card_text
from tests.test_e2e import swept

pytestmark = [pytest.mark.e2e, pytest.mark.flow]


@pytest.fixture(scope="module")
def timed_out(tmp_path_factory):
    grid = ["cpu=1", "tensor_dim=32,48", "measure_seconds=60", "variant_timeout_seconds=2"]
    return swept(tmp_path_factory.mktemp("timed_out"), *grid)


def test_every_variant_timed_out_with_its_reason(timed_out):
    assert timed_out["done"].returncode == 1, timed_out["done"].stderr
    variants = timed_out["summary"]["variants"]
    assert [(v["status"], v["message"]) for v in variants] == [("timeout", "stopped after 2 s")] * 2


def test_the_report_shows_the_timeouts_as_the_summary_does(timed_out):
    text = card_text((timed_out["dir"] / "report.html").read_text(encoding="utf-8"))
    assert "0 of 2 variants done (2 timed out)" in text
    assert "Variants without a result (2): 2 timed out" in text
    assert text.count("stopped after 2 s") == 2
    for entry in timed_out["summary"]["variants"]:
        assert entry["run"] in text
    assert "0 failed" not in text and "not finished yet" not in text and "still running" not in text


def test_piped_output_names_the_tag_first_and_gives_plain_lines(timed_out):
    out = timed_out["done"].stdout
    tag = timed_out["summary"]["tag"]
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if tag in line)
    assert lines[first] == f"torchperf sweep {tag}: 2 variant(s)"
    assert first < min(i for i, line in enumerate(lines) if "started cpu=1" in line)
    assert "\x1b[" not in out and "\r" not in out
    # The final table gives each timeout's reason; the counts say "timed out", not "failed".
    assert out.count("stopped after 2 s") >= 4  # two plain event lines, two table rows
    assert "2 variant(s): 0 done, 2 timed out" in out
