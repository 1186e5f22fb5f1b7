"""Prometheus metrics, on a registry the worker owns (never the global one at import).

Method names say the event they record. Histogram buckets are dense between 5 ms and 1 s so that a p99
near the usual objectives (100 ms to 500 ms) falls in a narrow bucket.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from processor.runtime.breaker import BreakerState

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5,
    0.6, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0,
)

OUTCOMES = ("success", "duplicate", "retried", "dead_lettered", "invalid")
LAG_STATUSES = ("OK", "WARN", "STALL", "STOP", "ERR")


class Metrics:
    """Every metric a worker exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "processor_events", "Events handled, by outcome.", ["topology", "handler", "outcome"], registry=r
        )
        self.processing = Histogram(
            "processor_processing_seconds", "Handler start to outputs acknowledged by the broker.",
            ["topology", "handler"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.end_to_end = Histogram(
            "processor_end_to_end_seconds", "Event creation (record timestamp) to processing done.",
            ["topology", "handler"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.retries = Counter(
            "processor_retries", "Events sent to a retry tier.",
            ["topology", "handler", "tier", "exception"], registry=r,
        )
        self.dead_letters = Counter(
            "processor_dead_letters", "Events sent to the dead-letter topic.",
            ["topology", "handler", "reason"], registry=r,
        )
        self.circuit_state = Gauge(
            "processor_circuit_state", "Breaker state: 0 closed, 1 half-open, 2 open.", ["breaker"], registry=r
        )
        self.dependency_up = Gauge(
            "processor_dependency_up", "1 when the dependency answers, 0 while it does not.",
            ["dependency"], registry=r,
        )
        self.assigned_partitions = Gauge(
            "processor_assigned_partitions", "Partitions assigned to this worker, per handler.",
            ["topology", "handler"], registry=r,
        )
        self.rebalances = Counter(
            "processor_rebalances", "Assignments this worker got from a handler's consumer group: one per "
            "rebalance it took part in. Static membership (PROCESSOR_GROUP_INSTANCE_ID) keeps a restart from "
            "adding one to every other replica.", ["topology", "handler"], registry=r,
        )
        self.circuit_opened = Counter(
            "processor_circuit_opened", "Times a breaker opened.", ["breaker"], registry=r
        )
        self.event_loop_lag = Histogram(
            "processor_event_loop_lag_seconds",
            "How much later than due the worker's event loop ran a timer (sampled every 100 ms): a blocked or "
            "CPU-starved loop delays every event.", ["topology"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.paused_partitions = Gauge(
            "processor_paused_partitions", "Partitions a handler holds paused (breaker open, retry not due).",
            ["topology", "handler", "reason"], registry=r,
        )

        self.stalled_partitions = Gauge(
            "processor_stalled_partitions", "Partitions with records to read and none delivered for "
            "PROCESSOR_STALL_SECONDS, with nothing of ours holding them (processor.runtime.stall).",
            ["topology", "handler"], registry=r,
        )
        self.stall_recoveries = Counter(
            "processor_stall_recoveries", "What the worker did to heal a stalled partition: seek (to the "
            "committed offset, and resume) or rejoin (leave the group and join it again).",
            ["topology", "handler", "action"], registry=r,
        )
        self.budget_policy_active = Gauge(
            "processor_budget_policy_active", "1 while a BudgetPolicy's action is in force in this worker.",
            ["topology", "slo", "action"], registry=r,
        )
        self.lag_messages = Gauge(
            "processor_consumer_lag_messages", "Records between the group's committed offset and the log end.",
            ["group", "topic", "partition"], registry=r,
        )
        self.lag_seconds = Gauge(
            "processor_consumer_lag_seconds", "Age of the oldest record the group has not committed (0 when none).",
            ["group", "topic", "partition"], registry=r,
        )
        self.lag_status = Gauge(
            "processor_consumer_lag_status",
            "Burrow-style evaluation of the group's lag: 1 for the current status, 0 for the others.",
            ["group", "status"], registry=r,
        )
        self.lag_forecast = Gauge(
            "processor_lag_forecast_seconds",
            "At the lag trend of the last minutes: seconds until the group's source lag crosses its lag SLO's "
            "threshold (until=threshold; 0: over it) or drains (until=drain); +Inf: not heading there.",
            ["group", "until"], registry=r,
        )
        self.monitor_last_run = Gauge(
            "processor_monitor_last_run_timestamp_seconds", "When the lag monitor last finished a pass.",
            registry=r,
        )
        self.slo_budget_remaining = Gauge(
            "processor_slo_error_budget_remaining_ratio",
            "Share of the SLO's error budget left, over the part of its window this worker has seen.",
            ["slo"], registry=r,
        )
        self.slo_burn_rate = Gauge(
            "processor_slo_burn_rate", "Error rate over the window divided by the rate the budget allows.",
            ["slo", "window"], registry=r,
        )
        self.rolling_p99 = Gauge(
            "processor_rolling_p99_seconds", "The monitor's rolling p99 over its last minute of observations.",
            ["topology", "handler", "kind"], registry=r,
        )

    def declare_handler(self, topology: str, handler: str) -> None:
        """Export a handler's outcome counters and latency histograms at zero before its first event.

        A labelled series appears only once something is recorded under its labels, and Prometheus's
        ``rate()`` and ``increase()`` count from a series' first sample: what the first scrape already
        saw was lost to them. In a test the first batch of a fresh worker (slow: first produce, first
        claims) was missing from ``histogram_quantile``, which put the p99 two buckets below the true one."""
        for outcome in OUTCOMES:
            self.events.labels(topology, handler, outcome)
        self.processing.labels(topology, handler)
        self.end_to_end.labels(topology, handler)
        self.rebalances.labels(topology, handler)

    def record_outcome(self, topology: str, handler: str, outcome: str, count: int = 1) -> None:
        if count:
            self.events.labels(topology, handler, outcome).inc(count)

    def record_retry(self, topology: str, handler: str, tier: str, exception: str) -> None:
        self.retries.labels(topology, handler, tier, exception).inc()

    def record_dead_letter(self, topology: str, handler: str, reason: str) -> None:
        self.dead_letters.labels(topology, handler, reason).inc()

    def set_circuit_state(self, breaker: str, state: BreakerState) -> None:
        self.circuit_state.labels(breaker).set(int(state))
        if state is BreakerState.OPEN:
            self.circuit_opened.labels(breaker).inc()

    def set_dependency_up(self, dependency: str, up: bool) -> None:
        self.dependency_up.labels(dependency).set(1 if up else 0)

    def serve(self, host: str, port: int) -> None:
        """Serve ``/metrics`` on host:port from a daemon thread (port 0: not served)."""
        if port:
            start_http_server(port, addr=host, registry=self.registry)
