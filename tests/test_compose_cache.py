"""Job configs composed with torchperf.compose_cache are those Hydra's own loader composes."""

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.config_repository import ConfigRepository
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict

from tests.conftest import ROOT
from torchperf.compose_cache import JobConfigs
from torchperf.hydra_app import register_resolvers


@pytest.fixture
def multirun_master():
    """``make_master(*overrides)``: a multirun's master config, its basic sweeper's batch and
    the loader's search path, as ``sweep_deployer.py -m OVERRIDES`` would have them."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    GlobalHydra.instance().clear()
    initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None)
    loader = GlobalHydra.instance().hydra.config_loader

    def make_master(*overrides):
        master = loader.load_configuration("config", list(overrides), run_mode=RunMode.MULTIRUN)
        params = [f"{key}={value}" for key, value in master.hydra.sweeper.params.items()]
        parsed = OverridesParser.create().parse_overrides([*params, *overrides])
        (batch,) = BasicSweeper.split_arguments(parsed, None)
        return master, batch, loader.get_search_path()

    yield make_master
    GlobalHydra.instance().clear()


def check_and_take(search_path, master, batch):
    """What a multirun does: the sweeper's check composes each job, the launcher takes them."""
    loader = ConfigLoaderImpl(config_search_path=search_path)
    job_configs = JobConfigs(loader)
    for overrides in batch:
        loader.load_sweep_config(master, list(overrides))
    return [job_configs.take(master, overrides) for overrides in batch]


@pytest.fixture
def file_loads(monkeypatch):
    """How many times Hydra's repository has loaded a config (file or structured)."""
    count = {"loads": 0}
    load = ConfigRepository.load_config

    def counting(self, config_path):
        count["loads"] += 1
        return load(self, config_path)

    monkeypatch.setattr(ConfigRepository, "load_config", counting)
    return count


def test_every_job_config_is_the_one_a_fresh_loader_composes(multirun_master):
    # GIVEN a grid that also sweeps a config group: its jobs load different files
    master, batch, search_path = multirun_master("backend=local,argo", "cpu=1,2", "tensor_dim=8")
    # WHEN the jobs are checked and taken through one loader, files shared across composes
    taken = check_and_take(search_path, master, batch)
    # THEN each is the config Hydra's own loader composes for it alone
    for overrides, config in zip(batch, taken, strict=True):
        fresh = ConfigLoaderImpl(config_search_path=search_path).load_sweep_config(
            master, list(overrides)
        )
        assert OmegaConf.to_yaml(config) == OmegaConf.to_yaml(fresh)
        assert OmegaConf.is_struct(config) and not OmegaConf.is_readonly(config.hydra)
    assert sorted((c.backend.name, c.cpu) for c in taken) == [
        ("argo", 1), ("argo", 2), ("local", 1), ("local", 2)
    ]  # fmt: skip


def test_no_job_sees_another_jobs_overrides_or_changes(multirun_master):
    master, _, search_path = multirun_master("cpu=1")
    loader = ConfigLoaderImpl(config_search_path=search_path)
    job_configs = JobConfigs(loader)
    # GIVEN jobs that override different settings (as an optimizing sweeper's trials may)
    batch = [["cpu=2", "measure_seconds=9"], [], ["backend=argo"], ["tensor_dim=8"], []]
    for overrides in batch:
        loader.load_sweep_config(master, overrides)
        config = job_configs.take(master, overrides)
        # THEN each is the config a fresh loader composes for it alone
        fresh = ConfigLoaderImpl(config_search_path=search_path).load_sweep_config(
            master, overrides
        )
        assert OmegaConf.to_yaml(config) == OmegaConf.to_yaml(fresh)
        # even after the previous job's config was changed, as the launcher and the job do
        with open_dict(config):
            config.hydra.job.num = config.hydra.job.id = 3
            config.cpu, config.backend.name, config.hydra.runtime.output_dir = 5, "x", "/x"


def test_config_files_are_loaded_once_per_multirun_not_per_job(multirun_master, file_loads):
    master, small, search_path = multirun_master("cpu=1,2", "tensor_dim=8,16")
    check_and_take(search_path, master, small)
    loads_for_4_jobs, file_loads["loads"] = file_loads["loads"], 0
    master, large, search_path = multirun_master("cpu=1,2", "tensor_dim=range(8,24)")
    check_and_take(search_path, master, large)
    assert len(large) == 32
    assert file_loads["loads"] == loads_for_4_jobs > 0


def test_the_launcher_takes_each_checked_config_once_and_composes_the_rest(
    multirun_master, composes
):
    master, _, search_path = multirun_master("cpu=1", "tensor_dim=8")
    loader = ConfigLoaderImpl(config_search_path=search_path)
    job_configs = JobConfigs(loader)
    composes.clear()  # count from here
    # GIVEN the sweeper's check composed a job, then changed the config it got
    checked = loader.load_sweep_config(master, ["cpu=2", "tensor_dim=8"])
    checked.cpu = 7
    # WHEN the launcher asks for it twice
    first = job_configs.take(master, ["cpu=2", "tensor_dim=8"])
    second = job_configs.take(master, ["cpu=2", "tensor_dim=8"])
    # THEN the first is the checked compose, as composed; the second is composed again
    assert len(composes) == 2
    assert first.cpu == second.cpu == 2
    assert first is not second and job_configs.checked == {}
