"""The composed configuration: defaults, presets and comments."""

import re

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from tests.conftest import ROOT
from torchperf.hydra_app import cpu_grid
from torchperf.plan import grid
from torchperf.settings import DEFAULT_VARIANT, usable_cores, validate_variant


def grid_of(config):
    """The jobs Hydra's basic sweeper makes of a composed config's sweeper params: the
    cartesian product of each key's values, read with Hydra's override parser."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.to_container(config.hydra.sweeper.params, resolve=True)
    overrides = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return grid(
        {
            o.key_or_group: list(o.sweep_iterator()) if o.is_sweep_override() else [o.value()]
            for o in overrides
        }
    )


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


def test_every_backend_setting_can_be_set_and_no_other(compose_config):
    from hydra.errors import ConfigCompositionException

    config = compose_config("backend=argo", "backend.max_parallel=8", "sweep=smoke")
    assert config.backend.max_parallel == 8
    with pytest.raises(ConfigCompositionException):
        compose_config("backend=argo", "backend.paralel=8")


def test_the_schema_types_every_root_setting(compose_config):
    from torchperf.schema import SETTINGS

    config = compose_config()
    assert sorted(key for key in config if key != "hydra") == sorted(SETTINGS)
    assert OmegaConf.get_type(config) is not dict  # typed by the schema, not a plain dict
    config.dry_run = "no"  # OmegaConf converts words to the field's type...
    assert config.dry_run is False  # ...which is why run_command checks the command's words
    with pytest.raises(ValidationError):
        config.cpu = "two"


def test_optuna_preset_tries_only_this_machines_cpu_counts(compose_config):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="hydra-optuna-sweeper")
    config = compose_config("sweep=optuna")
    cores = len(usable_cores())
    assert config.hydra.sweeper.params.cpu == f"choice({cpu_grid(cores)})"
    assert config.hydra.sweeper.max_failure_rate == 1.0  # a failed trial leaves the study going
