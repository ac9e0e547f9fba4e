"""Every private Metaflow or Hydra API torchperf still uses, in one list, each with the test that
fails when a release changes it. Code that takes up a private API adds its entry here; code that
drops one removes it. tests/test_private_api.py checks that each entry's test exists.

Hydra: none. The entry point, the launcher and the checks use hydra.main, the ConfigStore,
hydra.core's override parser and the Launcher plugin interface (hydra.core.utils.run_job,
configure_log, setup_globals, as hydra-joblib-launcher does); Hydra's errors reach
hydra_app.run_command through its documented HYDRA_FULL_ERROR switch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PrivateAPI:
    api: str  # the library's own name for it, e.g. "metaflow.runner.subprocess_manager.X"
    used_in: str  # where torchperf uses it: "torchperf/backends/local.py (_kill)"
    why: str  # why no public API does
    guarded_by: str  # the pytest node id that fails when it changes: "tests/test_x.py::test_y"


PRIVATE_APIS: tuple[PrivateAPI, ...] = (
    PrivateAPI(
        api="metaflow.runner.metaflow_runner.ExecutingRun.command_obj (its .process)",
        used_in="torchperf/backends/local.py (_stop)",
        why="ExecutingRun has no kill(): its wait(timeout) stops a run only at a timeout counted "
        "from the wait, prints a line into the terminal, sleeps 2 s on the event loop, and skips "
        "SIGTERM to a run whose runtime has no child at that moment (pkill -P fails first). A "
        "variant's timeout counts from its turn, and Ctrl-C stops every run: both need the "
        "run's process, which this attribute (undocumented) holds",
        guarded_by="tests/test_sweep.py::test_a_variant_whose_turn_runs_past_its_timeout_is_stopped",
    ),
    PrivateAPI(
        api="metaflow.plugins.cards.exception.CardNotPresentException",
        used_in="torchperf/report.py (card_html)",
        why="what metaflow.cards.get_cards raises for a task without the card; Metaflow exports "
        "no public name for it",
        guarded_by="tests/test_analytics_flow.py::test_report_finds_a_card_where_card_create_wrote_it",
    ),
    PrivateAPI(
        api="metaflow.plugins.cards.card_datastore.CardDatastore.get_storage_root",
        used_in="torchperf/report.py (_local_card_html)",
        why="with the local datastore, card create writes under the working directory's "
        ".metaflow while get_cards reads under METAFLOW_DATASTORE_SYSROOT_LOCAL; where the two "
        "differ the report reads the card where it was written, and only this names that folder",
        guarded_by="tests/test_analytics_flow.py::test_report_finds_a_card_where_card_create_wrote_it",
    ),
    PrivateAPI(
        api="metaflow.metaflow_git.get_repository_info",
        used_in="tests/test_local_launch.py (a test only)",
        why="what Metaflow records of the repository a run starts in; the test checks that a run "
        "started by its link in .flows/ records the project's own commit",
        guarded_by="tests/test_local_launch.py::test_runs_started_by_the_links_record_the_same_git_commit",
    ),
)
