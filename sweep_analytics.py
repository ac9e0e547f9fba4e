"""SweepAnalyticsFlow: the sweep's live aggregate, re-computed after every successful variant.

    python sweep_analytics.py --config-value config '{"tag": "sweep_20250101_120000_abc123"}' run
    python sweep_analytics.py card server

On Argo it is triggered by the sweep's event and reads only the run the event announces; the
sweep's final run, and every run of a local sweep, lists the tag's runs and reads those the
previous analytics run for the same tag had not seen (see torchperf/analytics.py).
"""

import json
import os
import sys

from torchperf.lifetime import long_lived

with long_lived():  # every process of this flow imports Metaflow, and keeps it until exit
    from metaflow import (
        Config,
        FlowSpec,
        card,
        config_expr,
        current,
        get_metadata,
        project,
        step,
        trigger,
    )


def parse_config(text: str) -> dict:
    """Fill the defaults (the event from the tag); a missing tag is reported by ``start``."""
    from torchperf.analytics import analytics_config

    return analytics_config(json.loads(text))


@project(name="torchperf")
@trigger(event=config_expr("config.event or 'torchperf_untagged'"))
class SweepAnalyticsFlow(FlowSpec):
    """Aggregate the successful TorchPerfFlow runs carrying the sweep's tag into `results`.

    `rows` (run pathspec -> row) carries the aggregate from one analytics run to the next, so a
    run delivered twice counts once and seen runs are never loaded again.
    """

    config = Config("config", default_value={"tag": None}, parser=parse_config)

    # A blank card that Metaflow renders once, not twice (metaflow_extensions/torchperf/).
    @card(type="torchperf_sweep", id="sweep")
    @step
    def start(self):
        """Read the new runs, merge them into the previous aggregate and draw the card."""
        from torchperf import analytics, report
        from torchperf.settings import ConfigError

        with long_lived():
            import matplotlib.figure  # noqa: F401
            import pandas  # noqa: F401

        try:
            tag = analytics.require_tag(self.config)
        except ConfigError as error:
            # One line for the user instead of a traceback; the task still counts as failed.
            sys.exit(f"error: {error}")
        # On Argo the event names the variant's run: only it is read, not the tag's listing.
        announced = analytics.announced_runs(os.environ)
        seen = analytics.collect(
            tag,
            analytics.previous_state(tag, current.run_id),
            announced=announced,
            wait_seconds=self.config.wait_seconds,
            wait_for=self.config.wait_for,
            baseline=self.config.baseline,
            poll_seconds=analytics.first_poll(get_metadata()),
        )
        try:
            # A variant that announced its success must be in what we read.
            analytics.check_visible(announced, seen)
        except ConfigError as error:
            sys.exit(f"error: {error}")
        self.rows = seen.rows
        self.ended = seen.ended  # failed, timed out, cancelled: with the sweep's reasons
        self.running = seen.running
        self.stats = {"listed": seen.listed, "loaded": seen.loaded, **seen.seconds}
        self.results = analytics.to_frame(analytics.derive(self.rows.values()))
        # A plain string: reading `results` in `end` would import pandas for one line.
        self.progress = analytics.progress_line(
            tag, len(self.results), analytics.ended_counts(self.ended), self.config.planned
        )
        # PNG bytes, so that the sweep's report needs neither pandas nor matplotlib.
        self.figures = report.scaling_pngs(self.results.to_dict("records"))
        report.fill_card(
            current.card["sweep"],
            tag=tag,
            results=self.results,
            ended=self.ended,
            running=self.running,
            planned=self.config.planned,
            figures=self.figures,
            baseline=self.config.baseline,
            listed=not announced,
        )
        self.next(self.end)

    @step
    def end(self):
        """Say the card is drawn (a local sweep measures the next variant then); print progress."""
        from torchperf import turns

        turns.card_drawn(self.config.card_drawn)
        print(self.progress)


if __name__ == "__main__":
    SweepAnalyticsFlow()
