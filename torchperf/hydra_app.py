"""The Hydra side of a sweep: the command-line check, the launcher's work, the single-run job."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import InterpolationResolutionError

from torchperf import sweep
from torchperf.errors import fail, one_line
from torchperf.plan import SWEPT_KEYS, check_overrides
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


def primary_config(arguments: list[str], root: Path) -> tuple[list[str], Path | None]:
    """The overrides on a command line, read with Hydra's own parser (so that a flag's value,
    `--cfg job`, is not taken for one), and the primary config file it selects (-cp, -cn, -cd),
    None when it is not a file this check can read (Hydra then reports it)."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(arguments)
    name = args.config_name or "config"
    name = name if name.endswith(".yaml") else f"{name}.yaml"
    folders = [Path(args.config_dir)] if args.config_dir else []
    path = args.config_path or "."
    if not path.startswith(("pkg://", "file://")):
        folders.append(Path(path) if Path(path).is_absolute() else root / path)
    found = next((folder / name for folder in folders if (folder / name).is_file()), None)
    return list(args.overrides), found


def check_command_line(arguments: list[str], root: Path) -> None:
    """Unknown keys and group options, caught before Hydra composes (one line, not a trace)."""
    overrides, config_file = primary_config(arguments, root)
    if config_file is None or not (root / "conf").is_dir():
        return
    primary = OmegaConf.load(config_file)
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
    check_overrides(overrides, known, groups, group_keys)


def unresolved(error: InterpolationResolutionError) -> str:
    """One line for a setting whose ${...} cannot be resolved."""
    why = one_line(error, first=True).split("while resolving interpolation: ")[-1].strip('"')
    return f"{error.full_key} cannot be resolved: {why}"


def job_values(config: DictConfig) -> dict:
    """A job's variant settings (and its backend's name), resolved."""
    values = {key: config[key] for key in SWEPT_KEYS}
    return values | {"backend": config.backend.name}


@dataclass
class MultirunState:
    """What the batches of one multirun share: the tag and the summary."""

    tag: str
    summary: object  # torchperf.summary.SweepSummary


def _open(config: DictConfig, jobs, sweep_dir: Path, state: MultirunState | None):
    try:
        return sweep.Sweep.open(
            config,
            jobs,
            sweep_dir,
            tag=state.tag if state else None,
            summary=state.summary if state else None,
        )
    except ConfigError as error:
        fail(error)
    except InterpolationResolutionError as error:
        # e.g. backend.image=${oc.env:IMAGE} with IMAGE unset: name the key, not a trace.
        fail(ConfigError(unresolved(error)))


def launch_batch(
    hydra_context,
    config: DictConfig,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
    state: MultirunState | None,
):
    """One batch from the sweeper (the whole grid from the basic sweeper, a few trials from an
    optimizing one): every job composed (through Hydra's config loader, as Hydra's own
    launchers do) and checked, then run as one sweep batch, each job's directory and JobReturn
    as Hydra's basic launcher makes them. Returns (JobReturns, state)."""
    from hydra.core.utils import configure_log, run_job, setup_globals

    setup_globals()
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    job_configs = []
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        job_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(job_config):
            job_config.hydra.job.id = idx
            job_config.hydra.job.num = idx
        job_configs.append(job_config)
    # The basic sweeper's batch is the whole grid: every job is checked before anything runs.
    # Optimizing sweepers choose values as they go: a bad trial is a failed trial (NaN).
    grid = config.hydra.sweeper._target_ == BASIC_SWEEPER
    try:
        jobs = [job_values(job_config) for job_config in job_configs] if grid else None
    except InterpolationResolutionError as error:
        fail(ConfigError(unresolved(error)))
    opened = _open(config, jobs, sweep_dir, state)
    state = state or MultirunState(opened.spec.tag, opened.summary)
    returns = []
    try:
        for job_config in job_configs:
            returns.append(
                run_job(
                    hydra_context=hydra_context,
                    task_function=lambda cfg: opened.run_job(
                        OmegaConf.to_container(cfg, resolve=True)
                    ),
                    config=job_config,
                    job_dir_key="hydra.sweep.dir",
                    job_subdir_key="hydra.sweep.subdir",
                )
            )
            configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    except BaseException:
        opened.close(interrupted=True)
        raise
    opened.close()
    return returns, state


def run_single(cfg: DictConfig) -> float:
    """Without -m: the one variant the config describes, as a sweep of one in Hydra's run dir."""
    from hydra.core.hydra_config import HydraConfig

    opened = _open(cfg, [{}], Path(HydraConfig.get().runtime.output_dir), None)
    try:
        value = opened.run_job(OmegaConf.to_container(cfg, resolve=True))
    except BaseException:
        opened.close(interrupted=True)
        raise
    opened.close()
    return value
