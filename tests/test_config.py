"""The composed configuration: defaults, presets and comments."""

import re

from omegaconf import OmegaConf

from tests.conftest import ROOT
from torchperf.hydra_app import cpu_grid
from torchperf.settings import DEFAULT_VARIANT, usable_cores, validate_variant


def grid_of(config):
    """The jobs Hydra's basic sweeper makes of a composed config's sweeper params."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.to_container(config.hydra.sweeper.params, resolve=True)
    parser = OverridesParser.create()
    (jobs,) = BasicSweeper.split_arguments(
        parser.parse_overrides([f"{k}={v}" for k, v in params.items()]), None
    )
    return [{ov.key_or_group: ov.value() for ov in parser.parse_overrides(job)} for job in jobs]


def test_defaults_are_a_valid_variant_on_the_local_backend(compose_config):
    config = compose_config()
    assert config.backend.name == "local"
    values = {key: config[key] for key in ("cpu", "tensor_dim", "measure_seconds", "device")}
    validate_variant(values, max_cpu=len(usable_cores()))


def test_config_defaults_match_the_flow_defaults(compose_config):
    config = compose_config()
    for key in ("cpu", "tensor_dim", "measure_seconds", "memory_mb", "device"):
        assert config[key] == DEFAULT_VARIANT[key], key


def test_default_grid_fits_this_machine(compose_config):
    jobs = grid_of(compose_config())
    cores = len(usable_cores())
    assert {job["cpu"] for job in jobs} == {int(c) for c in cpu_grid(cores).split(",")}
    assert max(job["cpu"] for job in jobs) == cores


def test_smoke_preset_is_small_and_quick(compose_config):
    config = compose_config("sweep=smoke")
    assert config.measure_seconds < 1
    assert all(job["tensor_dim"] <= 128 for job in grid_of(config))


def test_upstream_preset_is_the_45_variant_grid(compose_config):
    jobs = grid_of(compose_config("sweep=upstream"))
    assert len(jobs) == 45
    assert {job["tensor_dim"] for job in jobs} == {1000, 1250, 1500}


def test_every_setting_has_a_comment():
    for path in [ROOT / "config.yaml", *sorted((ROOT / "conf" / "backend").glob("*.yaml"))]:
        for line in path.read_text().splitlines():
            setting = re.match(r"^\s*([a-z_]+):\s*\S", line)
            if setting and not line.lstrip().startswith("#") and setting.group(1) != "name":
                if path.name == "config.yaml" and not re.match(r"^[a-z_]+:", line):
                    continue  # nested Hydra settings are documented by Hydra
                assert "#" in line, f"{path.name}: {line!r} has no comment"


def test_command_line_check_knows_every_backend_setting():
    from torchperf.hydra_app import check_command_line

    check_command_line(["-m", "backend=argo", "backend.max_parallel=8", "sweep=smoke"], ROOT)
