"""Lag forecasts: from the monitor's recent samples of a group's lag, when it crosses the lag SLO's threshold
at the current trend, or, when it shrinks, when it drains.

The lag is the worst source partition's age of the oldest unread record (``processor_consumer_lag_seconds``,
retry topics excluded: their records wait by design). The trend is the least-squares slope over the last
``window_seconds`` of samples (5 minutes: a healthy consumer's lag jitters by a fraction of a second, which
over 5 minutes is a slope too small to forecast a crossing within hours; a consumer that has stopped shows
a slope near 1 within three samples). A stopped consumer's lag grows one second a second; one that
is slower than its producers grows at the share of events it cannot keep up with.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from processor.topology.topology import Topology

MIN_SAMPLES = 3
INF = math.inf
WINDOW_SECONDS = 300.0


@dataclass(frozen=True)
class Forecast:
    """Seconds until the lag crosses ``threshold`` (INF when it does not head there, 0 when over it already),
    and until it drains to 0 (INF unless it shrinks); ``slope`` is seconds of lag per second."""

    lag_seconds: float
    slope: float
    to_threshold: float
    to_drain: float


def forecast(samples: list[tuple[float, float]], threshold: float | None) -> Forecast | None:
    """The forecast of (time, lag seconds) samples, oldest first; None with fewer than MIN_SAMPLES or no
    time between them. ``threshold`` None: no lag SLO covers the group, only the drain is forecast."""
    if len(samples) < MIN_SAMPLES:
        return None
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    spread = sum((t - mean_t) ** 2 for t, _ in samples)
    if spread == 0:
        return None
    slope = sum((t - mean_t) * (v - mean_v) for t, v in samples) / spread
    lag = samples[-1][1]
    to_threshold = INF
    if threshold is not None:
        if lag >= threshold:
            to_threshold = 0.0
        elif slope > 0:
            to_threshold = (threshold - lag) / slope
    to_drain = lag / -slope if slope < 0 and lag > 0 else (0.0 if lag == 0 else INF)
    return Forecast(lag, slope, to_threshold, to_drain)


def lag_thresholds(topology: Topology) -> dict[str, float]:
    """Consumer group -> the lowest threshold of the lag SLOs that cover it (its handler's, or the topology's)."""
    thresholds: dict[str, float] = {}
    for slo in topology.slos:
        if slo.sli != "lag":
            continue
        for spec in topology.handlers:
            if slo.handler in (None, spec.name):
                group = topology.group(spec.name)
                thresholds[group] = min(thresholds.get(group, math.inf), slo.threshold_seconds)
    return thresholds


class LagTrend:
    """The last ``window_seconds`` of each group's lag samples."""

    def __init__(self, window_seconds: float = WINDOW_SECONDS) -> None:
        self._window = window_seconds
        self._samples: dict[str, deque[tuple[float, float]]] = {}

    def add(self, group: str, now: float, lag_seconds: float) -> None:
        samples = self._samples.setdefault(group, deque())
        samples.append((now, lag_seconds))
        while samples and samples[0][0] < now - self._window:
            samples.popleft()

    def forecast(self, group: str, threshold: float | None) -> Forecast | None:
        return forecast(list(self._samples.get(group, ())), threshold)

    def forget(self, group: str) -> None:
        self._samples.pop(group, None)
