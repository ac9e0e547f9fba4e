"""How a figure, a warning and the environment read: one formatter for every place they appear."""

import io
import math

from rich.console import Console

from torchperf import display, live, report
from torchperf.progress import final_table


def test_a_figure_shows_the_digits_its_interval_supports_and_its_coverage():
    assert display.figure(204.96, (201.3, 209.1, 0.95)) == "205 GFLOP/s (95 % CI 201–209)"
    assert display.figure(36.812, [36.79, 36.84, 0.9586], unit="") == "36.81 (96 % CI 36.79–36.84)"


def test_an_unknown_coverage_is_not_shown_as_a_number():
    assert display.figure(204.96, (201.3, 209.1, math.nan)) == "205 GFLOP/s (CI 201–209)"
    assert display.figure(204.96, [201.3, 209.1, None], unit="x") == "205 x (CI 201–209)"


def test_a_figure_without_an_interval_has_one_decimal():
    assert display.figure(204.96) == "205.0 GFLOP/s"
    assert display.figure(204.96, (math.nan, math.nan, math.nan), unit="") == "205.0"


def test_the_terminal_the_cards_and_the_report_show_one_figure_alike():
    # GIVEN one measurement as the result, the summary entry and the analytics row hold it
    gflops, low, high, level = 36.812, 36.79, 36.84, 0.9586
    result = {"gflops": gflops, "gflops_ci": [low, high], "gflops_ci_level": level}
    entry = {"cpu": 1, "tensor_dim": 64, "status": "succeeded", "gflops": gflops}
    entry |= {"gflops_ci": [low, high, level], "run": "TorchPerfFlow/1"}
    row = {"gflops": gflops, "gflops_ci_low": low, "gflops_ci_high": high}
    row["gflops_ci_level"] = level
    expected = "36.81 (96 % CI 36.79–36.84)"
    # THEN each shows the same digits and the same interval
    assert live.figure(result) == "36.81 GFLOP/s (96 % CI 36.79–36.84)"
    assert report.figure_text(row) == expected
    output = io.StringIO()
    Console(file=output, width=120).print(final_table([entry]))
    assert expected in output.getvalue()


def test_a_warning_is_named_by_its_first_clause():
    assert display.warning_name("shared cores: the process got 60 %") == "shared cores"


def test_the_environment_names_the_core_list_and_says_what_a_missing_value_means():
    rows = dict(display.env_rows({"cores": [0, 1], "image": None, "cpu_mhz": 2400.0}))
    assert rows == {
        "pinned cores (ids)": "0, 1",
        "container image": "none (not run from an image)",
        "cpu MHz": "2400",
    }
    assert display.env_value("host", None) == "unknown"
