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


# Hydra reads the primary config and its groups from one folder, conf/. The primary config
# stays at the root (config.yaml, where a newcomer looks) and conf/config.yaml links to it: with
# the root itself as that folder, --help walks .venv and .metaflow for groups (5 min, not 1 s).
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
