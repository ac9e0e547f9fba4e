"""Sweep TorchPerfFlow over CPU count and matrix size, on this machine or on Argo Workflows.

python sweep_deployer.py -m                              # the default grid, locally
python sweep_deployer.py -m cpu=1,2 tensor_dim=256,512   # your own grid
python sweep_deployer.py -m tag=sweep_20261126_...       # resume a sweep
python sweep_deployer.py -m backend=argo                 # on Argo Workflows
python sweep_deployer.py --help                          # the settings and the usual commands
"""

import sys

import hydra
from omegaconf import DictConfig

from torchperf import hydra_app, signals


# conf/config.yaml links to the root config.yaml: with the root itself as the config folder,
# --help and --hydra-help would walk .venv and .metaflow for config groups (minutes).
@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Without -m: the one variant the config describes; its GFLOP/s. With -m, torchperf's
    launcher (hydra_plugins/torchperf_launcher) runs each batch of jobs through the backend."""
    return hydra_app.run_single(cfg)


if __name__ == "__main__":
    hydra_app.register()
    # SIGTERM and SIGHUP (a closed terminal) end the sweep the way Ctrl-C does; a batch
    # interrupted so is closed by the launcher first.
    signals.end_like_ctrl_c()
    sys.exit(hydra_app.run_command(main, sys.argv[1:]))
