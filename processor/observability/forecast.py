"""Lag forecasts: from the monitor's recent samples of a group's lag, when it crosses the lag SLO's threshold
at the current trend, or, when it shrinks, when it drains.

The lag is the worst source partition's age of the oldest unread record (``processor_consumer_lag_seconds``,
retry topics excluded: their records wait by design). The trend is the least-squares slope over the last
``window_seconds`` of samples (5 minutes: a healthy consumer's lag jitters by a second or two, which over 5
minutes is a slope too small to forecast a crossing within hours), and over its last ``RECENT_SECONDS``. A
stopped consumer's lag grows one second a second; one that is slower than its producers grows at the share
of events it cannot keep up with.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from processor.topology.topology import Topology

MIN_SAMPLES = 3
INF = math.inf
WINDOW_SECONDS = 300.0
RECENT_SECONDS = 60.0
# Lag growing this fast over the last minute is no jitter (a healthy consumer's lag jitters by about its commit
# interval, a slope of 0.05 over a minute at most): the recent rate forecasts alone. A consumer that stopped
# after minutes of flat lag would otherwise be forecast at the five minutes' slope, ten times too late.
CLEAR_RATE = 0.5


@dataclass(frozen=True)
class Forecast:
    """Seconds until the lag crosses ``threshold`` (INF when it does not head there, 0 when over it already),
    and until it drains to 0 (INF unless it shrinks); ``slope`` is seconds of lag per second, lately."""

    lag_seconds: float
    slope: float
    to_threshold: float
    to_drain: float


def forecast(samples: list[tuple[float, float]], threshold: float | None) -> Forecast | None:
    """The forecast of (time, lag seconds) samples, oldest first; None with fewer than MIN_SAMPLES or no
    time between them. ``threshold`` None: no lag SLO covers the group, only the drain is forecast.

    A crossing is forecast only while the lag grows over the whole window and over its last
    ``RECENT_SECONDS`` too, at the slower of the two rates unless the recent one is CLEAR_RATE or more: the
    tail of a burst that has drained (up over the window, flat or down lately) forecasts nothing. A lag of
    0 is caught up: nothing to cross."""
    overall = _slope(samples)
    if overall is None:
        return None
    recent = _slope([s for s in samples if s[0] >= samples[-1][0] - RECENT_SECONDS])
    lately = overall if recent is None else recent
    lag = samples[-1][1]
    to_threshold = INF
    if threshold is not None:
        if lag >= threshold:
            to_threshold = 0.0
        elif lag > 0 and overall > 0 and lately > 0:
            to_threshold = (threshold - lag) / (lately if lately >= CLEAR_RATE else min(overall, lately))
    to_drain = 0.0 if lag == 0 else (lag / -lately if lately < 0 else INF)
    return Forecast(lag, lately, to_threshold, to_drain)


def _slope(samples: list[tuple[float, float]]) -> float | None:
    return least_squares_slope(samples) if len(samples) >= MIN_SAMPLES else None


def least_squares_slope(points: Sequence[tuple[float, float]]) -> float | None:
    """The slope of the least-squares line through ``points`` (x, y); None for fewer than two x values."""
    if len(points) < 2:
        return None
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


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
