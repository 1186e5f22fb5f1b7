"""Error budgets and burn rates, as one worker sees them, from its own metrics.

Each tick samples, per SLO, the cumulative count of bad and of all events (or, for a lag SLO, of bad and
of all seconds). A burn rate over a window is the error ratio between the newest sample and the one a
window older, divided by the error budget (1 - objective); the budget remaining is that ratio since the
worker started. A worker keeps ``history_seconds`` of samples, so windows longer than that (and than its
uptime) are computed over what it has seen. The fleet-wide numbers are the Prometheus recording rules
(`processor slo rules`), which sum every worker over the SLO's full window.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from prometheus_client.utils import floatToGoString as _untyped_float_to_go_string

from processor.observability.metrics import Metrics
from processor.topology.slo import SLO, window_seconds
from processor.topology.topology import Topology

# prometheus_client formats the `le` label with this; it ships without type hints.
float_to_go_string = cast(Callable[[float], str], _untyped_float_to_go_string)


@dataclass
class _History:
    samples: deque[tuple[float, float, float]] = field(default_factory=deque)  # (time, bad, total)
    lag_bad: float = 0.0
    lag_total: float = 0.0
    last_tick: float | None = None


class BudgetTracker:
    """Exports ``processor_slo_error_budget_remaining_ratio`` and ``processor_slo_burn_rate``."""

    def __init__(
        self, topology: Topology, metrics: Metrics, history_seconds: float = 6 * 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._topology = topology
        self._metrics = metrics
        self._history_seconds = history_seconds
        self._clock = clock
        # Counters start at zero with the process: that is the first sample of every history, so a window
        # longer than the uptime covers everything since the start.
        started = clock()
        self._histories = {slo.name: _History(deque([(started, 0.0, 0.0)])) for slo in topology.slos}

    def tick(self, max_lag_seconds: float | None) -> None:
        """Sample every SLO; ``max_lag_seconds`` is the topology's worst lag now (None: not measured here)."""
        now = self._clock()
        for slo in self._topology.slos:
            history = self._histories[slo.name]
            counts = self._counts(slo, history, now, max_lag_seconds)
            if counts is not None or slo.sli != "lag":
                history.last_tick = now
            if counts is None:
                continue
            history.samples.append((now, *counts))
            while history.samples and history.samples[0][0] < now - self._history_seconds:
                history.samples.popleft()
            self._export(slo, history)

    def _counts(self, slo: SLO, history: _History, now: float, lag: float | None) -> tuple[float, float] | None:
        if slo.sli == "lag":
            if lag is None:
                return None
            elapsed = now - history.last_tick if history.last_tick is not None else 0.0
            history.lag_total += elapsed
            if lag > slo.threshold_seconds:
                history.lag_bad += elapsed
            return history.lag_bad, history.lag_total
        handlers = [slo.handler] if slo.handler else [h.name for h in self._topology.handlers]
        bad = total = 0.0
        for handler in handlers:
            labels = {"topology": self._topology.name, "handler": handler}
            if slo.sli == "latency":
                count = self._value("processor_processing_seconds_count", labels)
                within = self._value("processor_processing_seconds_bucket",
                                     {**labels, "le": float_to_go_string(slo.threshold_seconds)})
                bad += count - within
                total += count
            else:
                dead = self._value("processor_events_total", {**labels, "outcome": "dead_lettered"})
                bad += dead
                total += dead + self._value("processor_events_total", {**labels, "outcome": "success"})
        return bad, total

    def _value(self, name: str, labels: dict[str, str]) -> float:
        return self._metrics.registry.get_sample_value(name, labels) or 0.0

    def _export(self, slo: SLO, history: _History) -> None:
        label = slo.label(self._topology.name)
        _, bad, total = history.samples[-1]  # counts are cumulative since this worker started
        self._metrics.slo_budget_remaining.labels(label).set(_remaining(bad, total, slo))
        windows = {w for pair in slo.burn_windows() for w in (pair.long, pair.short)}
        for window in sorted(windows, key=window_seconds):
            self._metrics.slo_burn_rate.labels(label, window).set(self._burn(slo, history, window_seconds(window)))

    def burn(self, slo: SLO, seconds: float) -> tuple[float, float]:
        """This worker's burn rate of ``slo`` over the last ``seconds``, and the events (or seconds) it
        counted there."""
        history = self._histories[slo.name]
        t, _, total = history.samples[-1]
        if self._clock() - t > seconds:
            # Nothing sampled in the window: a lag SLO on a worker that has stopped measuring lag (the monitor's
            # lease went to another). Its last burn is no burn now; a policy acting on it is undone.
            return 0.0, 0.0
        return self._burn(slo, history, seconds), total - _window_start(history, seconds)[2]

    def _burn(self, slo: SLO, history: _History, seconds: float) -> float:
        _, bad, total = history.samples[-1]
        start = _window_start(history, seconds)
        d_total = total - start[2]
        if d_total <= 0:
            return 0.0
        return ((bad - start[1]) / d_total) / slo.error_budget


def _window_start(history: _History, seconds: float) -> tuple[float, float, float]:
    """The newest sample at least ``seconds`` older than the last one (the first sample when none is)."""
    t = history.samples[-1][0]
    return next((s for s in reversed(history.samples) if s[0] <= t - seconds), history.samples[0])


def _remaining(bad: float, total: float, slo: SLO) -> float:
    if total <= 0:
        return 1.0
    return 1.0 - (bad / total) / slo.error_budget
