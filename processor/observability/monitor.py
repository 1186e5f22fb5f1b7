"""The lag/latency monitor: every few seconds, lag per partition of every consumer group of the topology,
its Burrow-style status, rolling p99s, and the SLO budget numbers.

It runs as a Faust timer in every worker (and alone as `processor monitor`), but only one process per
topology measures lag at a time: the holder of a Redis lease, renewed at every pass and taken over by
another worker within ``3 x interval`` when its holder dies. One measurer means one set of lag series per
group (summing them in PromQL counts each partition once) and one set of admin requests on the brokers,
and the measurer does not depend on the consumer group it measures, so a stuck or dead handler is still
seen. When Redis cannot be reached every worker measures: duplicate series beat no series while the
thing that elects is down. Rolling p99s are measured by every worker for its own handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from processor.config import Settings
from processor.kafka.lag import PartitionLag, read_lag
from processor.observability.budget import BudgetTracker
from processor.observability.burrow import LagEvaluator, Sample, Status, worst
from processor.observability.forecast import LagTrend, lag_thresholds
from processor.observability.metrics import LAG_STATUSES, Metrics
from processor.runtime.redis_client import RedisClient
from processor.topology.topology import Topology

log = logging.getLogger(__name__)

# Renew the lease if it is ours, else take it if it is free. ARGV: owner, lease_ms.
_LEAD = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] or not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# Give the lease up if it is ours. ARGV: owner.
_RESIGN = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RollingQuantile:
    """Quantiles over the last ``seconds`` of observations, kept as per-second buckets of at most
    ``per_second`` samples each (reservoir-sampled beyond that), so memory stays bounded under load."""

    def __init__(self, seconds: int = 60, per_second: int = 2000, rng: random.Random | None = None) -> None:
        self._seconds = seconds
        self._cap = per_second
        self._rng = rng or random.Random()
        self._buckets: deque[tuple[int, list[float], list[int]]] = deque()

    def observe(self, value: float, now: float) -> None:
        second = int(now)
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append((second, [], [0]))
        _, values, seen = self._buckets[-1]
        seen[0] += 1
        if len(values) < self._cap:
            values.append(value)
        else:
            slot = int(self._rng.random() * seen[0])
            if slot < self._cap:
                values[slot] = value

    def quantile(self, q: float, now: float) -> float | None:
        horizon = int(now) - self._seconds
        while self._buckets and self._buckets[0][0] <= horizon:
            self._buckets.popleft()
        values = sorted(v for _, vs, _ in self._buckets for v in vs)
        if not values:
            return None
        return values[min(len(values) - 1, int(q * len(values)))]


@dataclass
class HandlerLatency:
    """Rolling windows of one handler's processing and end-to-end times."""

    processing: RollingQuantile = field(default_factory=RollingQuantile)
    end_to_end: RollingQuantile = field(default_factory=RollingQuantile)

    def observe(self, processing_seconds: float, end_to_end_seconds: float, now: float) -> None:
        self.processing.observe(processing_seconds, now)
        self.end_to_end.observe(end_to_end_seconds, now)


class Monitor:
    """One pass every ``interval_seconds``: see the module docstring."""

    def __init__(
        self,
        topology: Topology,
        settings: Settings,
        metrics: Metrics,
        redis_client: RedisClient,
        owner: str,
        latency: Mapping[str, HandlerLatency],
        interval_seconds: float = 5.0,
        window: int = 10,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.topology = topology
        self._settings = settings
        self._metrics = metrics
        self._redis = redis_client
        self._owner = owner
        self._latency = latency
        self.interval_seconds = interval_seconds
        self._clock = clock
        self._lead_script = redis_client.register_script(_LEAD)
        self._resign_script = redis_client.register_script(_RESIGN)
        self._evaluator = LagEvaluator(window=window)
        self._trend = LagTrend()
        self._thresholds = lag_thresholds(topology)
        self._budget = BudgetTracker(topology, metrics, clock=clock)
        self.leading = False
        self.statuses: dict[str, Status] = {}

    @property
    def budget(self) -> BudgetTracker:
        """This worker's error budgets and burn rates, updated every pass (budget policies read them)."""
        return self._budget

    @property
    def groups(self) -> dict[str, list[str]]:
        """Consumer group -> the topics it consumes."""
        return {self.topology.group(h.name): [h.source, *h.retry_topics] for h in self.topology.handlers}

    async def run_forever(self) -> None:
        while True:
            started = time.monotonic()
            await self.tick()
            await asyncio.sleep(max(0.0, self.interval_seconds - (time.monotonic() - started)))

    async def tick(self) -> None:
        """One pass; never raises (a monitor that dies silently is worse than one that reports ERR)."""
        now = self._clock()
        self._export_p99(now)
        max_lag: float | None = None
        try:
            self.leading = await self._elect()
            if self.leading:
                max_lag = await self._measure(now)
            else:
                self._clear_lag()
        except Exception:
            log.exception("lag monitor pass failed")
        self._budget.tick(max_lag)
        self._metrics.monitor_last_run.set(self._clock())

    @property
    def _lease_key(self) -> str:
        return f"monitor-leader:{self.topology.name}"

    async def _elect(self) -> bool:
        lease_ms = int(self.interval_seconds * 3 * 1000)
        try:
            return bool(await self._lead_script(keys=[self._lease_key], args=[self._owner, lease_ms]))
        except (RedisError, OSError):
            return True

    async def resign(self) -> None:
        """On a graceful stop: hand the measuring over at once instead of after the lease runs out."""
        with contextlib.suppress(RedisError, OSError):
            await self._resign_script(keys=[self._lease_key], args=[self._owner])

    async def _measure(self, now: float) -> float:
        # The lag SLO counts source topics only: a retry tier's records wait for their delay by design.
        sources = {h.source for h in self.topology.handlers}
        worst_lag = 0.0
        for group, topics in self.groups.items():
            try:
                lags = await asyncio.to_thread(read_lag, self._settings, group, topics)
            except Exception as exc:
                log.warning("cannot read the lag of %s: %s", group, exc)
                self._set_status(group, "ERR")
                # Unknown now: an old forecast left exported would keep its ticket firing (the trend is kept).
                for until in ("threshold", "drain"):
                    with contextlib.suppress(KeyError):
                        self._metrics.lag_forecast.remove(group, until)
                continue
            group_lag = 0.0
            for lag in lags:
                self._export_lag(lag, now)
                if lag.topic in sources:
                    group_lag = max(group_lag, lag.seconds(now))
            worst_lag = max(worst_lag, group_lag)
            self._export_forecast(group, now, group_lag)
            self._set_status(group, worst([self._evaluator.partition_status(group, lag.topic, lag.partition)
                                           for lag in lags]))
        return worst_lag

    def _export_lag(self, lag: PartitionLag, now: float) -> None:
        labels = (lag.group, lag.topic, str(lag.partition))
        self._metrics.lag_messages.labels(*labels).set(lag.messages)
        self._metrics.lag_seconds.labels(*labels).set(lag.seconds(now))
        self._evaluator.add(lag.group, lag.topic, lag.partition, Sample(lag.committed, lag.messages, lag.members))

    def _export_forecast(self, group: str, now: float, lag_seconds: float) -> None:
        self._trend.add(group, now, lag_seconds)
        threshold = self._thresholds.get(group)
        ahead = self._trend.forecast(group, threshold)
        if ahead is None:
            return
        if threshold is not None:
            self._metrics.lag_forecast.labels(group, "threshold").set(ahead.to_threshold)
        self._metrics.lag_forecast.labels(group, "drain").set(ahead.to_drain)

    def _set_status(self, group: str, status: Status) -> None:
        self.statuses[group] = status
        for name in LAG_STATUSES:
            self._metrics.lag_status.labels(group, name).set(1 if name == status else 0)

    def _clear_lag(self) -> None:
        # Another worker measures: drop our series so each partition is reported once.
        self._metrics.lag_messages.clear()
        self._metrics.lag_seconds.clear()
        self._metrics.lag_status.clear()
        self._metrics.lag_forecast.clear()
        for group in self.groups:
            self._evaluator.forget(group)
            self._trend.forget(group)
        self.statuses.clear()

    def _export_p99(self, now: float) -> None:
        for handler, windows in self._latency.items():
            for kind, window in (("processing", windows.processing), ("end_to_end", windows.end_to_end)):
                p99 = window.quantile(0.99, now)
                if p99 is not None:
                    self._metrics.rolling_p99.labels(self.topology.name, handler, kind).set(p99)
