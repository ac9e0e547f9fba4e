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


PRIVATE_APIS: tuple[PrivateAPI, ...] = ()
