"""Bad input gets one clear line that names the key and the value."""

import json

import pytest

from torchperf.settings import (
    DEFAULT_VARIANT,
    ConfigError,
    matrix_bytes,
    parse_variant_config,
    size_text,
    validate_variant,
)


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"cpu": 0}, "cpu=0"),
        ({"cpu": -2}, "cpu=-2"),
        ({"cpu": 1.5}, "cpu=1.5"),
        ({"cpu": "two"}, "cpu='two'"),
        ({"cpu": True}, "cpu=True"),
        ({"tensor_dim": 0}, "tensor_dim=0"),
        ({"measure_seconds": 0}, "measure_seconds=0"),
        ({"measure_seconds": -1}, "measure_seconds=-1"),
        ({"measure_seconds": "soon"}, "measure_seconds='soon'"),
        ({"device": "tpu"}, "device='tpu'"),
        ({"colour": "red"}, "'colour'"),
    ],
)
def test_rejects_bad_values_in_one_line_naming_them(raw, named):
    with pytest.raises(ConfigError) as error:
        validate_variant(raw)
    assert named in str(error.value)
    assert "\n" not in str(error.value)


def test_rejects_cpu_above_local_cores():
    with pytest.raises(ConfigError, match="cpu=3 exceeds the 2 cores"):
        validate_variant({"cpu": 3}, max_cpu=2)


def test_rejects_matrix_that_cannot_fit_in_memory():
    # GIVEN 1 GiB of memory and a matrix whose three copies need more
    n = 10_000
    assert matrix_bytes(n) > 2**30
    with pytest.raises(ConfigError, match="tensor_dim=10000 needs"):
        validate_variant({"tensor_dim": n}, memory_bytes=2**30)


def test_memory_is_named_in_units_that_fit():
    # GIVEN 10 MiB for n=2048: 3 * 4 * 2048**2 bytes = 48 MiB
    with pytest.raises(ConfigError) as error:
        validate_variant({"tensor_dim": 2048, "memory_mb": 10})
    assert str(error.value) == (
        "tensor_dim=2048 needs 48.0 MiB for its matrices but only 10.0 MiB is available"
    )


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (2**20, "1.0 MiB"), (3 * 2**29, "1.5 GiB")],
)
def test_sizes_read_in_the_unit_that_fits(size, text):
    assert size_text(size) == text


def test_memory_request_bounds_the_matrix_too():
    with pytest.raises(ConfigError, match="tensor_dim"):
        validate_variant({"tensor_dim": 20_000, "memory_mb": 1024})


def test_whole_floats_and_digit_strings_are_accepted_as_counts():
    settings = validate_variant({"cpu": 2.0, "tensor_dim": "64"})
    assert (settings.cpu, settings.tensor_dim) == (2, 64)


def test_flow_config_parser_completes_a_partial_config():
    parsed = parse_variant_config(json.dumps({"cpu": 2}))
    assert parsed == {**DEFAULT_VARIANT, "cpu": 2}


def test_flow_config_parser_rejects_non_objects():
    with pytest.raises(ConfigError, match="JSON object"):
        parse_variant_config("[1, 2]")
