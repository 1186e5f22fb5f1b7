"""Chaos experiments: numbers from the recorded scrapes. Counter totals at the end, latency quantiles over
a time window, the worst lag, and whether a condition was ever seen.

Counters are per process and die with it, so a window's increase is summed process by process (from the
last scrape at or before the window's start, or 0 for a process started later, to the last scrape at or
before its end), the way ``increase()`` sums series in PromQL.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from processor.chaos.record import Series
from processor.observability.scrape import Scrape, histogram_quantile

ACCOUNTED = ("success", "duplicate", "dead_lettered", "invalid")
# A killed replica's counters lose what it did after its last scrape (up to 1 s), and the records it had
# processed but not committed (commit interval 1 s) are delivered again to the next owner, who counts
# them again: so around each kill, counts may differ by what that replica handled in about this long.
CRASH_WINDOW_SECONDS = 3.0


def _at(series: Series, when: float) -> Scrape | None:
    """The last scrape of ``series`` at or before ``when`` (None: none yet)."""
    found = None
    for sample in series.samples:
        if sample.at > when:
            break
        found = sample.scrape
    return found


def total(series: Iterable[Series], name: str, **labels: str) -> float:
    """The sum over processes of each one's last scrape: what the fleet reported before it stopped."""
    return sum(s.last.value(name, **labels) for s in series)


def increase(series: Iterable[Series], start: float, end: float, name: str, **labels: str) -> float:
    total_ = 0.0
    for s in series:
        last = _at(s, end)
        if last is None:
            continue
        first = _at(s, start)
        total_ += last.value(name, **labels) - (first.value(name, **labels) if first is not None else 0.0)
    return total_


def window_quantile(series: Iterable[Series], q: float, start: float, end: float, name: str, **labels: str) -> float:
    """``histogram_quantile(q, sum by (le) (increase(<name>_bucket[window])))`` over the window."""
    buckets: dict[float, float] = defaultdict(float)
    for s in series:
        last = _at(s, end)
        if last is None:
            continue
        first = _at(s, start)
        before = first.buckets(name, **labels) if first is not None else {}
        for bound, count in last.buckets(name, **labels).items():
            buckets[bound] += count - before.get(bound, 0.0)
    return histogram_quantile(q, buckets)


@dataclass(frozen=True)
class LagPeak:
    """The worst lag seen: records behind (the largest group's sum over its source partitions) and the
    age of the oldest unprocessed source record, and when each peaked."""

    messages: float
    messages_at: float
    seconds: float
    seconds_at: float


def max_lag(series: Iterable[Series], sources: set[str]) -> LagPeak:
    peak = LagPeak(0.0, 0.0, 0.0, 0.0)
    for s in series:
        for sample in s.samples:
            per_group: dict[str, float] = defaultdict(float)
            oldest = 0.0
            for key, value in sample.scrape.samples.get("processor_consumer_lag_messages", {}).items():
                labels = dict(key)
                if labels.get("topic") in sources:
                    per_group[labels["group"]] += value
            for key, value in sample.scrape.samples.get("processor_consumer_lag_seconds", {}).items():
                if dict(key).get("topic") in sources:
                    oldest = max(oldest, value)
            messages = max(per_group.values(), default=0.0)
            if messages > peak.messages:
                peak = LagPeak(messages, sample.at, peak.seconds, peak.seconds_at)
            if oldest > peak.seconds:
                peak = LagPeak(peak.messages, peak.messages_at, oldest, sample.at)
    return peak


def ever(series: Iterable[Series], test: Callable[[Scrape], bool]) -> float | None:
    """When ``test`` first held for a scrape of any process (None: never)."""
    times = [sample.at for s in series for sample in s.samples if test(sample.scrape)]
    return min(times, default=None)


def crash_tolerance(series: Iterable[Series], handler: str, window_seconds: float = CRASH_WINDOW_SECONDS) -> int:
    """How far the counts may be off because replicas were killed: what each killed replica handled in its
    last ``window_seconds`` (see CRASH_WINDOW_SECONDS), from its own rate before it died."""
    slack = 0
    for s in series:
        if not s.killed or len(s.samples) < 2:
            continue
        last = s.samples[-1]
        earlier = next((x for x in reversed(s.samples) if last.at - x.at >= window_seconds), s.samples[0])
        elapsed = max(1e-3, last.at - earlier.at)
        handled = sum(last.scrape.value("processor_events_total", handler=handler, outcome=o)
                      - earlier.scrape.value("processor_events_total", handler=handler, outcome=o) for o in ACCOUNTED)
        slack += math.ceil(handled / elapsed * window_seconds) + 1
    return slack


@dataclass(frozen=True)
class Agreement:
    """One count as the workers reported it and as the verifier saw it."""

    handler: str
    what: str
    metrics: float
    verifier: float
    tolerance: int
    at_least: bool = False  # the workers may count more: what the verifier cannot see (redeliveries)

    @property
    def ok(self) -> bool:
        if self.at_least:
            return self.metrics >= self.verifier - self.tolerance
        return abs(self.metrics - self.verifier) <= self.tolerance
