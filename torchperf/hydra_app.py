"""The Hydra side of a sweep: a callback that opens and closes it, a task function per job."""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from torchperf import sweep
from torchperf.plan import check_overrides, expand_overrides
from torchperf.settings import ConfigError, usable_cores

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def cpu_grid(cores: int) -> str:
    """Powers of two below ``cores``, and ``cores`` itself, as a Hydra sweep: 1,2,4,6."""
    counts, count = [], 1
    while count < cores:
        counts.append(count)
        count *= 2
    return ",".join(map(str, [*counts, cores]))


def register_resolvers() -> None:
    """Resolvers the configs use; called by the entry point before Hydra composes anything."""
    OmegaConf.register_new_resolver(
        "torchperf_cpu_grid", lambda: cpu_grid(len(usable_cores())), replace=True
    )


def check_command_line(arguments: list[str], root: Path) -> None:
    """Unknown keys and group options, caught before Hydra composes (one line, not a trace)."""
    primary = OmegaConf.load(root / "config.yaml")
    known = [key for key in primary if key not in ("defaults", "hydra")]
    groups = {
        folder.name: [path.stem for path in folder.glob("*.yaml")]
        for folder in (root / "conf").iterdir()
        if folder.is_dir() and any(folder.glob("*.yaml"))  # not __pycache__
    }
    # Groups whose options fill their own node (conf/backend/*.yaml -> cfg.backend); the
    # `# @package _global_` presets of conf/sweep/ change root settings instead.
    group_keys = {}
    for name, options in groups.items():
        texts = [(root / "conf" / name / f"{option}.yaml").read_text() for option in options]
        if not any("@package _global_" in text for text in texts):
            group_keys[name] = {key for text in texts for key in OmegaConf.create(text)}
    check_overrides(
        [arg for arg in arguments if not arg.startswith("-")], known, groups, group_keys
    )


def fail(error: ConfigError) -> None:
    """Bad input: one line on stderr and exit status 2, before anything runs."""
    print(f"error: {error}", file=sys.stderr)
    # SystemExit passes through Hydra's error reporting untouched.
    sys.exit(2)


class SweepCallback(Callback):
    """Opens the sweep before the first job and closes it after the last one."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        hydra = config.hydra
        jobs = None
        if hydra.sweeper._target_ == BASIC_SWEEPER:
            params = OmegaConf.to_container(hydra.sweeper.params or {}, resolve=True)
            # Unresolved: an override's own ${...} is the job's to resolve, not the list's.
            task = OmegaConf.to_container(hydra.overrides.task, resolve=False)
            jobs = expand_overrides(params, task)
        self._open(config, jobs, Path(hydra.sweep.dir))

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._open(config, [{}], Path(config.hydra.run.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep.current().close()

    def on_run_end(self, config: DictConfig, **kwargs) -> None:
        sweep.current().close()

    @staticmethod
    def _open(config: DictConfig, jobs: list[dict] | None, sweep_dir: Path) -> None:
        try:
            sweep.Sweep.open(config, jobs, sweep_dir)
        except ConfigError as error:
            fail(error)
        except InterpolationResolutionError as error:
            # e.g. backend.image=${oc.env:IMAGE} with IMAGE unset: name the key, not a trace.
            fail(ConfigError(unresolved(error)))


def unresolved(error: InterpolationResolutionError) -> str:
    """One line for a setting whose ${...} cannot be resolved."""
    why = str(error).splitlines()[0]
    why = why.split("while resolving interpolation: ")[-1].strip('"')
    return f"{error.full_key} cannot be resolved: {why}"


def run_job(cfg: DictConfig) -> float:
    """One Hydra job: one variant. Returns its GFLOP/s, NaN when it failed (a failed trial)."""
    return sweep.current().run_job(OmegaConf.to_container(cfg, resolve=True))
