"""The Hydra side of a sweep: the entry point's run, the launcher's work, the single-run job.

Bad input gets one line and exit status 2 before anything runs. Hydra refuses by itself what
the typed config (torchperf/schema.py) or its override grammar cannot take; ``run_command``
turns those errors, and torchperf's own ``ConfigError``, into that one line.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import InterpolationResolutionError

from torchperf import schema, sweep
from torchperf.errors import fail, one_line
from torchperf.plan import SWEPT_KEYS
from torchperf.settings import ConfigError, usable_cores

# hydra-optuna-sweeper tells Optuna a NaN as a completed trial, which Optuna refuses, and the
# sweeper's recovery from that ends the study; a job that raised is a failed trial, counted
# against hydra.sweeper.max_failure_rate, and Optuna's log gives its reason.
RAISING_SWEEPERS = ("optuna",)
NO_TRIAL_COMPLETED = "No trials are completed yet."
# Hydra's override grammar, for the line that answers an override it cannot read.
GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic/"
# The flags that each choose what the command does; Hydra takes one (and raises a bare
# ValueError, with a traceback, for two). --resolve goes with --cfg or --help only.
COMMANDS = {
    "-m": "-m",
    "--multirun": "-m",
    "-r": "--run",
    "--run": "--run",
    "-c": "--cfg",
    "--cfg": "--cfg",
    "-i": "--info",
    "--info": "--info",
    "-sc": "--shell-completion",
    "--shell-completion": "--shell-completion",
}
# Output folders this process's commands were given (the launcher notes its sweep folder
# before Hydra's sweeper creates it): a rejected command removes those it left unused.
_output_folders: list[Path] = []


def cpu_grid(cores: int) -> str:
    """Powers of two below ``cores``, and ``cores`` itself, as a Hydra sweep: 1,2,4,6."""
    counts, count = [], 1
    while count < cores:
        counts.append(count)
        count *= 2
    return ",".join(map(str, [*counts, cores]))


def register() -> None:
    """The resolvers and the schema the configs use; before Hydra composes anything."""
    OmegaConf.register_new_resolver(
        "torchperf_cpu_grid", lambda: cpu_grid(len(usable_cores())), replace=True
    )
    schema.register()


# -- the entry point ---------------------------------------------------------------------------
def run_command(main: Callable[[], object], arguments: Sequence[str]) -> int:
    """Run the entry point's @hydra.main function; the process's exit status."""
    try:
        check_flags(arguments)
        # Hydra's own errors (composition, override grammar, a missing config) then reach
        # this function as exceptions instead of Hydra's report of several lines.
        os.environ["HYDRA_FULL_ERROR"] = "1"
        main()
    except KeyboardInterrupt:
        return 130
    except sweep.StartFailed as error:
        print(f"error: the sweep could not start: {error}", file=sys.stderr)
        return 1
    except sweep.FailedTrial as error:  # more failed trials than hydra.sweeper.max_failure_rate
        print(f"error: the study stopped: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        line = rejection(error)
        if line is not None:
            discard_unused_folders()
            print(f"error: {line}", file=sys.stderr)
            return 2
        # Optuna's answer, at the study's end, when no trial succeeded (reasons logged above).
        if isinstance(error, ValueError) and str(error) == NO_TRIAL_COMPLETED:
            print("error: no trial succeeded: the study has no best value", file=sys.stderr)
            return 1
        raise
    return sweep.last_exit_status()


def check_flags(arguments: Sequence[str]) -> None:
    """Two of Hydra's flags that cannot go together, in one line (Hydra raises a traceback)."""
    chosen = sorted({COMMANDS[argument] for argument in arguments if argument in COMMANDS})
    if len(chosen) > 1:
        raise ConfigError(
            f"{' and '.join(chosen)} cannot go together: --cfg and --info show one run's "
            "config (drop -m), -m runs the sweep"
        )
    if "--resolve" in arguments and not {"-c", "--cfg", "--help", "-h"} & set(arguments):
        raise ConfigError("--resolve goes with --cfg or --help")


def rejection(error: BaseException) -> str | None:
    """The one line for a command Hydra or torchperf refused; None for any other error."""
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    if isinstance(error, ConfigError):
        return one_line(error, first=True)
    if not isinstance(error, HydraException):
        return None
    if isinstance(error, OverrideParseException):
        return (
            f"cannot read {error.override!r}: quote a value with spaces or symbols "
            f"(key=\"'a b'\"), see {GRAMMAR}"
        )
    if isinstance(error, MissingConfigException) and error.missing_cfg_file and error.options:
        group, _, option = error.missing_cfg_file.rpartition("/")
        return f"{group}={option} is unknown; choose one of: {', '.join(sorted(error.options))}"
    cause = error.__cause__
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:
        known = [key for key in (cause.parent_node or {}) if key != "hydra"]
        return f"unknown setting {cause.full_key!r}; known: {', '.join(sorted(known))}"
    if isinstance(cause, ValidationError) and cause.full_key:
        kinds = {int: "a whole number", float: "a number", bool: "true or false"}
        kind = kinds.get(schema.SweepSettings.__annotations__.get(cause.full_key))
        if kind:
            return f"{cause.full_key}={cause.value} must be {kind}"
        return f"{cause.full_key}={cause.value}: {one_line(cause.msg, first=True)}"
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def note_output_folder(folder) -> None:
    """A folder made for this command: removed if the command is refused before using it."""
    _output_folders.append(Path(str(folder)))


def discard_unused_folders() -> None:
    """Remove the noted folders that hold only what Hydra wrote before the refusal, and their
    parents (multirun/<date>) where that left them empty."""
    while _output_folders:
        folder = _output_folders.pop()
        if not folder.is_dir() or not all(_written_by_hydra(path) for path in folder.iterdir()):
            continue
        shutil.rmtree(folder)
        # Parents named by a relative sweep dir (multirun/2026-12-06), never the cwd itself.
        for parent in folder.parents[:-1] if not folder.is_absolute() else []:
            try:
                parent.rmdir()
            except OSError:  # not empty: another sweep's
                break


def _written_by_hydra(path: Path) -> bool:
    if path.name in ("multirun.yaml", ".hydra"):
        return True
    return path.suffix == ".log" and path.is_file() and path.stat().st_size == 0


# -- the checks Hydra's schema leaves --------------------------------------------------------
def check_settings(config: DictConfig, overrides: Sequence[str]) -> None:
    """What the schema lets through: a key added with + (Hydra adds whatever + names), and a
    boolean written as a word in ``overrides``, the command line's (OmegaConf reads yes, no, on
    and off as booleans)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    extra = sorted(set(config) - set(schema.SETTINGS) - {"hydra"})
    if extra:
        known = ", ".join(sorted(schema.SETTINGS))
        raise ConfigError(f"unknown setting {extra[0]!r}; known: {known}")
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if override.key_or_group not in schema.BOOLEANS:
            continue
        values = (
            list(override.sweep_iterator()) if override.is_discrete_sweep() else [override.value()]
        )
        for value in values:
            if not isinstance(value, bool):
                raise ConfigError(f"{override.key_or_group}={value} must be true or false")


def unresolved(error: InterpolationResolutionError) -> str:
    """One line for a setting whose ${...} cannot be resolved."""
    why = one_line(error, first=True).split("while resolving interpolation: ")[-1].strip('"')
    return f"{error.full_key} cannot be resolved: {why}"


def job_values(config: DictConfig) -> dict:
    """A job's variant settings (and its backend's name), resolved."""
    values = {key: config[key] for key in SWEPT_KEYS}
    return values | {"backend": config.backend.name}


# -- the launcher's work -----------------------------------------------------------------------
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
    except InterpolationResolutionError as error:
        # e.g. backend.image=${oc.env:IMAGE} with IMAGE unset: name the key, not a trace.
        raise ConfigError(unresolved(error)) from None


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
    as Hydra's basic launcher makes them. Returns (JobReturns, state); ConfigError for a
    refused batch, before anything runs."""
    from hydra.core.utils import configure_log, run_job, setup_globals

    setup_globals()
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    sweeper = config.hydra.runtime.choices.get("hydra/sweeper")
    if state is None:
        check_settings(config, config.hydra.overrides.task)
        if config.dry_run and sweeper != "basic":
            raise ConfigError(
                f"dry_run=true needs Hydra's basic sweeper: hydra/sweeper={sweeper} chooses each "
                "trial from the figures of those before"
            )
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
    # Optimizing sweepers choose values as they go: a bad trial is a failed trial.
    try:
        jobs = [job_values(job) for job in job_configs] if sweeper == "basic" else None
    except InterpolationResolutionError as error:
        raise ConfigError(unresolved(error)) from None
    opened = _open(config, jobs, sweep_dir, state)
    state = state or MultirunState(opened.spec.tag, opened.summary)
    raising = sweeper in RAISING_SWEEPERS

    def task(job_config: DictConfig) -> float:
        return opened.run_job(OmegaConf.to_container(job_config, resolve=True), raising)

    returns = []
    try:
        for job_config in job_configs:
            returns.append(
                run_job(
                    hydra_context=hydra_context,
                    task_function=task,
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

    hydra = HydraConfig.get()
    output_dir = Path(hydra.runtime.output_dir)
    note_output_folder(hydra.run.dir)  # as configured: relative, with its parents
    try:
        check_settings(cfg, hydra.overrides.task)
        opened = _open(cfg, [{}], output_dir, None)
    except ConfigError as error:
        # Here, inside Hydra's run of the job, an exception would come with Hydra's line
        # "Error executing job ...": exit at once instead.
        discard_unused_folders()
        fail(error)
    try:
        value = opened.run_job(OmegaConf.to_container(cfg, resolve=True))
    except BaseException:
        opened.close(interrupted=True)
        raise
    opened.close()
    return value
