"""CPU seconds the sweep process spends composing job configs, Hydra's way and torchperf's
(torchperf.compose_cache), measured in the same run.

    METAFLOW_USER=dev .venv/bin/python benchmarks/compose_cpu.py [--repeats 5]

A round takes a fresh loader and does what a multirun of ``sweep_deployer.py -m backend=argo
dry_run=true sweep=upstream`` (45 jobs) does with it: the basic sweeper's check composes every
job, then the launcher gets every job's config. Three ways, alternating round by round:
- hydra: the launcher composes each job again, every compose reads every config file;
- shared files: the same, with the config files read once (SharedConfigRepository);
- torchperf: shared files, and the launcher takes the check's configs (JobConfigs), as it does.
Prints each way's median process_time and whether the launcher got the same configs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COMMAND = ["backend=argo", "dry_run=true", "sweep=upstream"]


def job_overrides(loader, master) -> list[list[str]]:
    """The basic sweeper's batch for the master config."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{key}={value}" for key, value in master.hydra.sweeper.params.items()]
    task = list(master.hydra.overrides.task)
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(params + task)
    (batch,) = BasicSweeper.split_arguments(parsed, None)
    return batch


def compose_round(search_path, master, batch, way: str) -> tuple[float, list[str]]:
    """CPU seconds of the sweeper's check and the launcher's configs, and the latter."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from omegaconf import OmegaConf

    from torchperf.compose_cache import JobConfigs, SharedConfigRepository

    start = time.process_time()
    loader = ConfigLoaderImpl(config_search_path=search_path)
    compose = loader.load_sweep_config
    if way == "shared files":
        loader.repository = SharedConfigRepository(search_path)
    elif way == "torchperf":
        compose = JobConfigs(loader).take
    for overrides in batch:  # the sweeper's check
        loader.load_sweep_config(master, list(overrides))
    configs = [compose(master, list(overrides)) for overrides in batch]
    elapsed = time.process_time() - start
    return elapsed, [OmegaConf.to_yaml(config) for config in configs]


WAYS = ("hydra", "shared files", "torchperf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from torchperf.hydra_app import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        loader = GlobalHydra.instance().hydra.config_loader
        master = loader.load_configuration("config", COMMAND, run_mode=RunMode.MULTIRUN)
        batch = job_overrides(loader, master)
        times = {way: [] for way in WAYS}
        configs = {}
        for _ in range(args.repeats):
            for way in WAYS:
                elapsed, configs[way] = compose_round(loader.get_search_path(), master, batch, way)
                times[way].append(elapsed)
    print(f"{len(batch)} jobs checked and launched, median of {args.repeats} rounds (CPU seconds):")
    hydra = statistics.median(times["hydra"])
    for way in WAYS:
        median = statistics.median(times[way])
        rounds = " ".join(f"{t:.2f}" for t in times[way])
        same = configs[way] == configs["hydra"]
        print(f"  {way:<13} {median:5.2f}  x{median / hydra:.2f}  same configs: {same}  ({rounds})")


if __name__ == "__main__":
    main()
