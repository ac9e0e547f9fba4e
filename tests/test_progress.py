"""The terminal display, rendered by rich into a string at a given width, on a terminal or not."""

import io
import json
import re
import shlex

import pytest
from rich.console import Console

from tests.test_sweep import FakeBackend
from torchperf.backends.base import Outcome
from torchperf.plan import Variant
from torchperf.progress import SweepProgress, continued, eta_seconds, final_table
from torchperf.sweep import Sweep

TAG = "sweep_20261201_120000_abc123"
VARIANTS = [Variant(cpu, n, f"b_{cpu}_{n}") for cpu in (1, 2) for n in (1024, 2048, 4096)]
CI = [201.2, 209.4, 0.96]
# How each variant ends, in order: a figure, a timeout, a failure with a long message, ...
ENDINGS = [
    Outcome("succeeded", "TorchPerfFlow/1795717425234887", 205.3, gflops_ci=CI),
    Outcome("timeout", "TorchPerfFlow/1795717425234888", message="stopped after 30 s"),
    Outcome(
        "failed",
        "TorchPerfFlow/1795717425234889",
        message="RuntimeError: device=cuda but torch sees no CUDA device " * 2,
    ),
    Outcome("skipped", "TorchPerfFlow/1795717425234880", 1234.5, message="succeeded before"),
    Outcome("cancelled", message="interrupted"),
]
ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")


def entries(endings=ENDINGS):
    """The summary's entries for VARIANTS ending as ``endings`` (the rest not started)."""
    out = []
    for variant, outcome in zip(VARIANTS, [*endings, None], strict=False):
        outcome = outcome or Outcome("cancelled", message="not started")
        out.append(
            {
                "cpu": variant.cpu,
                "tensor_dim": variant.tensor_dim,
                "device": "cpu",
                "status": outcome.status,
                "run": outcome.run,
                "gflops": outcome.gflops,
                "message": outcome.message,
                **({"gflops_ci": outcome.gflops_ci} if outcome.gflops_ci else {}),
                "warnings": ["shared cores: the process got 60 %"] if outcome.gflops else [],
            }
        )
    return out


def shown_lines(output: str) -> list[str]:
    """Every line as the terminal shows it: escape codes out, redrawn lines apart."""
    return [line for line in re.split(r"[\r\n]", ANSI.sub("", output)) if line.strip()]


def run_display(width: int, terminal: bool, resume: str | None = None) -> str:
    output = io.StringIO()
    console = Console(width=width, file=output, force_terminal=terminal, color_system=None)
    display = SweepProgress(TAG, len(VARIANTS), console=console)
    for variant, outcome in zip(VARIANTS, ENDINGS, strict=False):
        display.started(variant)
        display.ended(variant, outcome)
    display.close(entries(), resume=resume)
    return output.getvalue()


@pytest.mark.parametrize("width", [80, 120])
def test_the_live_line_fits_the_terminal_and_always_shows_count_elapsed_and_eta(width):
    lines = shown_lines(run_display(width, terminal=True))
    assert all(len(line) <= width for line in lines), max(lines, key=len)
    # Nothing shrinks to a lone ellipsis.
    assert not [line for line in lines if re.search(r"(^|\s)…(\s|$)", line)]
    live = [line for line in lines if line.lstrip().startswith(("━", "╸")) or "/6 ·" in line]
    assert len(live) >= len(ENDINGS)
    for line in live:
        assert re.search(r"\d/6 · \d+:\d\d · ETA (-|\d+:\d\d)", line), line
    # The last figure reaches the live line at 120 columns.
    if width == 120:
        assert any("205 GFLOP/s (96 % CI 201–209)" in line for line in live)


def test_the_eta_follows_the_pace_and_counts_down_between_ends():
    # GIVEN 2 of 6 variants ran in 20 s, one skipped (no time), and 4 s since the last end
    assert eta_seconds(20.0, 4.0, ran=2, ended=3, planned=6) == 3 * 10.0 - 4.0
    assert eta_seconds(20.0, 9.0, ran=2, ended=3, planned=6) < eta_seconds(20.0, 4.0, 2, 3, 6)
    assert eta_seconds(20.0, 99.0, ran=2, ended=3, planned=6) == 0.0  # overdue
    assert eta_seconds(0.0, 1.0, ran=0, ended=1, planned=6) is None  # no pace yet
    assert eta_seconds(20.0, 4.0, ran=2, ended=2, planned=None) is None  # no plan


def test_cancelled_and_timed_out_are_counted_apart_from_failed():
    text = "\n".join(shown_lines(run_display(120, terminal=True)))
    assert "6 variant(s): 2 done, 1 failed, 1 timed out, 2 cancelled" in text


@pytest.mark.parametrize("width", [80, 120])
def test_the_final_table_fits_and_gives_each_rows_reason(width):
    output = io.StringIO()
    Console(width=width, file=output, color_system=None).print(
        final_table(entries(), runs=width >= 110)
    )
    lines = shown_lines(output.getvalue())
    assert all(len(line) <= width for line in lines), max(lines, key=len)
    text = "\n".join(lines)
    assert "stopped after 30 s" in text and "not started" in text and "interrupted" in text
    assert "205 (96 % CI 201–209)" in text and "shared cores" in text
    # The long failure message wraps within its column instead of widening the table.
    assert "sees no CUDA" in text.replace("\n", " ")
    assert ("1795717425234887" in text) == (width >= 110)


def test_a_pipe_gets_the_tag_first_and_plain_lines_without_a_live_bar():
    output = run_display(80, terminal=False)
    lines = output.splitlines()
    assert lines[0] == f"torchperf sweep {TAG}: 6 variant(s)"
    assert "\x1b[" not in output and "\r" not in output and "━" not in output
    assert any("started cpu=1 n=1024" in line for line in lines)
    assert any("cpu=1 n=2048: timeout: stopped after 30 s" in line for line in lines)
    assert any(
        re.match(r"\[2/6 · \d+:\d\d · ETA \d+:\d\d · 1 done, 1 timed out\]", line) for line in lines
    )


def test_the_terminal_shows_the_tag_first():
    lines = shown_lines(run_display(80, terminal=True))
    assert lines[0] == f"torchperf sweep {TAG}: 6 variant(s)"


def test_a_long_resume_command_is_cut_between_words_and_pastes_as_one():
    command = f"python sweep_deployer.py -m tag={TAG} cpu=1,2 'tensor_dim=range(256,4096,256)' x=1"
    lines = continued(command, 60)
    assert all(len(line) <= 60 for line in lines) and len(lines) > 1
    assert shlex.split(" ".join(line.removesuffix("\\") for line in lines)) == shlex.split(command)


class InterruptedBackend(FakeBackend):
    """The user presses Ctrl-C while the second variant runs."""

    def run_variant(self, spec, variant, settings):
        if sum(call[0] == "run" for call in self.calls) == 1:
            raise KeyboardInterrupt
        return super().run_variant(spec, variant, settings)


def test_an_interrupted_sweep_prints_the_command_that_resumes_it(deployer_sweep, tmp_path, capsys):
    # GIVEN a multirun with the user's overrides, one of which needs quotes in a shell
    overrides = ["cpu=1", "tensor_dim=32,64", "measure_seconds=0.5", "backend.name=local"]
    runner = deployer_sweep(InterruptedBackend(), *overrides, "tensor_dim=range(32,96,32)")
    # WHEN it is interrupted during its second variant
    with pytest.raises(KeyboardInterrupt), runner:
        pass
    out = capsys.readouterr().out
    tag = json.loads((tmp_path / "sweep" / "summary.json").read_text())["tag"]
    # THEN it printed its tag first and, last, how to resume: the tag and the user's overrides
    lines = out.splitlines()
    assert lines[0].startswith(f"torchperf sweep {tag}")
    start = lines.index("interrupted; to run what did not succeed:") + 1
    command = " ".join(line.strip().removesuffix("\\") for line in lines[start:])
    assert shlex.split(command) == [
        "python",
        "sweep_deployer.py",
        "-m",
        f"tag={tag}",
        *overrides,
        "tensor_dim=range(32,96,32)",
    ]
    assert "'tensor_dim=range(32,96,32)'" in command  # quoted: the shell would read the brackets


def test_a_finished_sweep_prints_no_resume_command(compose_config, tmp_path, capsys):
    sweep = Sweep.open(compose_config("cpu=1"), [{"cpu": 1}], tmp_path, backend=FakeBackend())
    sweep.run_job({"cpu": 1})
    sweep.close()
    assert "interrupted" not in capsys.readouterr().out
