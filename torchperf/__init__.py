"""torchperf: config-driven PyTorch throughput sweeps over CPU count and matrix size."""
