"""Durations counted into fixed buckets, for the roles' heartbeats and the supervisor's /metrics.

A role keeps one `Histogram` per thing it times (a query by mode, an embedding batch, a
commit) for its process's life and sends `as_dict()` with its heartbeats: a few dozen
numbers, whatever the traffic. The supervisor adds them up across the role's restarts
(supervisor.metrics) and exports them as Prometheus histograms.
"""

from __future__ import annotations

import bisect

#: upper bounds of the buckets, seconds (Prometheus's defaults, with 1 ms and 2.5 ms below)
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Histogram:
    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one: above every bound
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def as_dict(self) -> dict:
        """{"counts": per bucket (not cumulative, the last above every bound), "sum": seconds}."""
        return {"counts": list(self.counts), "sum": round(self.sum, 6)}
