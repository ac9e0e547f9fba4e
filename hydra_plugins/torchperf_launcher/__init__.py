"""torchperf's Hydra launcher: every batch of jobs becomes one batch of TorchPerfFlow runs."""
