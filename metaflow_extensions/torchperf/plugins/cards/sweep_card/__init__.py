"""The analytics card's type: Metaflow's blank card, drawn once when its step ends.

A blank card is runtime-updatable, so Metaflow renders it twice when its task ends (the card,
then its live-view data), each in a process of its own. SweepAnalyticsFlow draws its card once,
at the end of its work; the second process would only delay the sweep's next measurement.
Metaflow loads this package in every process that runs a flow of this project (the project
root is on their import path) and ships it in the code package on Argo.
"""

from metaflow.cards import BlankCard


class SweepCard(BlankCard):
    """Components appended in the step, rendered once at its end; no live updates."""

    type = "torchperf_sweep"
    RUNTIME_UPDATABLE = False


CARDS = [SweepCard]
