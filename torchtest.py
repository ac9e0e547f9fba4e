"""TorchPerfFlow: PyTorch fp32 matrix-squaring throughput for one CPU count and matrix size.

python torchtest.py run
python torchtest.py run --config-value config '{"cpu": 2, "tensor_dim": 2048}'
python torchtest.py card server
"""

from torchperf.lifetime import long_lived

with long_lived():  # every process of this flow imports Metaflow, and keeps it until exit
    from metaflow import (
        Config,
        FlowSpec,
        card,
        config_expr,
        current,
        project,
        resources,
        step,
    )

from torchperf.settings import DEFAULT_VARIANT, parse_variant_config


@project(name="torchperf")
class TorchPerfFlow(FlowSpec):
    """Measure GFLOP/s of squaring an n x n fp32 matrix with `cpu` threads on `cpu` cores.

    The number is the median over timed samples taken after warm-up; `result` (the versioned
    schema of torchperf/result.py) holds it with the samples, their spread and where it was
    measured. The matrix itself is not stored.
    """

    config = Config("config", default_value=DEFAULT_VARIANT, parser=parse_variant_config)

    # A CUDA variant asks its pod for one GPU; local runs ignore @resources.
    @resources(
        cpu=config.cpu,
        memory=config.memory_mb,
        gpu=config_expr("1 if config.device == 'cuda' else None"),
    )
    @card(type="blank", id="benchmark", refresh_interval=1)
    @step
    def start(self):
        """Validate the settings, pin to `cpu` cores and measure, with a live card."""
        from torchperf import bench, cgroups, fingerprint, live, turns
        from torchperf.result import Result
        from torchperf.settings import available_memory_bytes, usable_cores, validate_variant

        settings = validate_variant(dict(self.config), memory_bytes=available_memory_bytes())
        allowed = usable_cores()
        affinity = bench.pin_to_cores(settings.cpu)
        # Imported before the lock: the import is slow and may overlap other work, not timing.
        with long_lived():
            import torch  # noqa: F401
        bench.require_device(settings.device)

        # Card renders run on the cores not measured (if any), so they do not cool the caches.
        spare = [core for core in allowed if core not in affinity] or None
        card = live.BenchmarkCard(current.card["benchmark"], settings, render_cores=spare)
        # In a pod the CFS quota bounds the threads, and throttling lowers the figure: record both.
        quota, throttled_before = cgroups.cpu_quota(), cgroups.throttling()
        # A local sweep gives the cores to one measurement at a time: wait for this one's turn.
        with turns.measuring(settings.turn):
            env = fingerprint.collect(settings.cpu)  # before measuring: the load is not ours
            # Warm-up, then timed samples; the card renders between the two, never during one.
            timed = live.measure(card, settings)
        limits = cgroups.limits_report(
            settings.cpu, affinity, quota, throttled_before, cgroups.throttling()
        )
        warnings = [*timed["warnings"], *limits["warnings"], *fingerprint.warnings(env)]
        result = Result.measured(
            timed, affinity=affinity, limits=limits, env=env, warnings=warnings
        )
        # The versioned schema (torchperf/result.py), stored as plain types.
        self.result = result.to_dict()
        card.finish(self.result)
        self.next(self.end)

    @step
    def end(self):
        """Report the figure and, on Argo, announce the success to the sweep's analytics."""
        from torchperf import events, live
        from torchperf.plan import variant_id
        from torchperf.result import Result

        result = Result.from_dict(self.result)
        print(
            f"{live.figure(self.result)} at cpu={self.config.cpu}, "
            f"n={self.config.tensor_dim} (IQR {100 * result.iqr_ratio:.1f} %)"
        )
        variant = variant_id(self.config.cpu, self.config.tensor_dim, self.config.device)
        run = f"{current.flow_name}/{current.run_id}"
        events.announce(self.config.event, events.payload(self.config.tag, run, variant))


if __name__ == "__main__":
    TorchPerfFlow()
