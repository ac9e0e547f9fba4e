"""The launcher's face for Hydra: its config node and the Launcher class; the work is in
torchperf.hydra_app.launch_batch (as hydra-joblib-launcher keeps its work in _core.py).

Hydra finds it by scanning the ``hydra_plugins`` namespace package: from the project root
(``python sweep_deployer.py`` puts it on sys.path) or from an installed torchperf.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher


@dataclass
class TorchperfLauncherConf:
    # Where the variants run is the job config's `backend` (backend=local|argo), not a setting here.
    _target_: str = "hydra_plugins.torchperf_launcher.torchperf_launcher.TorchperfLauncher"


ConfigStore.instance().store(
    group="hydra/launcher", name="torchperf", node=TorchperfLauncherConf, provider="torchperf"
)


class TorchperfLauncher(Launcher):
    """Receives each batch from the sweeper, plans and checks it, runs it through the backend."""

    def __init__(self) -> None:
        self.config = self.hydra_context = self.task_function = None
        self.state = None  # the sweep this multirun's batches belong to (one tag, one summary)

    def setup(self, *, hydra_context, task_function, config) -> None:
        from torchperf.hydra_app import note_output_folder

        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        # Before Hydra's sweeper creates it: a command refused from here on removes it.
        note_output_folder(config.hydra.sweep.dir)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from torchperf.hydra_app import launch_batch

        returns, self.state = launch_batch(
            self.hydra_context, self.config, job_overrides, initial_job_idx, self.state
        )
        return returns
