"""Job configs composed once per multirun, from config files read once per multirun.

Hydra's basic sweeper composes every job's config to check a batch before launching it, and a
launcher composes each again; each compose reads, parses and wraps every config file it uses
anew, Hydra's own hydra/*.yaml included. For the 45 jobs of the upstream grid that was half the
sweep process's CPU (benchmarks/compose_cpu.py). The configs are the ones Hydra composes:
tests/test_compose_cache.py compares them."""

from __future__ import annotations

import copy
from collections.abc import Sequence

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.config_repository import ConfigRepository
from hydra.plugins.config_source import ConfigResult
from omegaconf import DictConfig


class SharedConfigRepository(ConfigRepository):
    """Hydra's config repository, whose loaded files outlive one compose.

    Each compose wraps the loader's repository in a CachingConfigRepository, a deep copy whose
    sources then become the primary config's hydra.searchpath: the copies share ``loaded``,
    keyed by their sources. Hydra changes what it loads (the loaded nodes become the composed
    config's, which the job's overrides then set), so every load hands out a deep copy, as
    ConfigStore.load does for structured configs.
    """

    def __init__(self, config_search_path) -> None:
        super().__init__(config_search_path)
        self.loaded: dict[tuple, ConfigResult | None] = {}

    def __deepcopy__(self, memo) -> SharedConfigRepository:
        # The same `loaded` and config sources (Hydra never changes a source; a deep copy of
        # the structured one copied the whole ConfigStore, every compose).
        copied = copy.copy(self)
        copied.sources = list(self.sources)
        return copied

    def load_config(self, config_path: str) -> ConfigResult | None:
        sources = tuple((source.full_path(), source.provider) for source in self.sources)
        key = (sources, config_path)
        if key not in self.loaded:
            self.loaded[key] = super().load_config(config_path)
        return copy.deepcopy(self.loaded[key])


class JobConfigs:
    """The job configs of one multirun. The sweeper's check composes each job through the
    loader's load_sweep_config, which this replaces (on that loader only) with one that also
    keeps a copy for the launcher to ``take`` instead of composing the job again.
    """

    def __init__(self, config_loader) -> None:
        if isinstance(config_loader, ConfigLoaderImpl):
            config_loader.repository = SharedConfigRepository(config_loader.get_search_path())
        self.compose = config_loader.load_sweep_config
        self.checked: dict[tuple, list[DictConfig]] = {}
        config_loader.load_sweep_config = self._compose_and_keep

    def _compose_and_keep(
        self, master_config: DictConfig, sweep_overrides: list[str]
    ) -> DictConfig:
        config = self.compose(master_config, sweep_overrides)
        # A copy: whoever composed it may change the config it got.
        key = (id(master_config), tuple(sweep_overrides))
        self.checked.setdefault(key, []).append(copy.deepcopy(config))
        return config

    def take(self, master_config: DictConfig, sweep_overrides: Sequence[str]) -> DictConfig:
        """The job's config: the one composed for the sweeper's check, else composed now
        (optimizing sweepers check nothing)."""
        key = (id(master_config), tuple(sweep_overrides))
        kept = self.checked.get(key)
        if not kept:
            return self.compose(master_config, list(sweep_overrides))
        config = kept.pop(0)
        if not kept:
            del self.checked[key]
        return config
