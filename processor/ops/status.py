"""`processor status`: lag per partition, p99s, SLO compliance and budget, breakers, at a glance.

It reads a worker's ``/metrics``; when that worker is not the one measuring lag (see monitor.py), or when
no worker answers at all (every consumer is down: the moment the lag matters most), the lag is read from
the broker directly, so the lag view is complete whichever replica it points at, or none. Without a
worker's metrics, what only a worker knows (its outcome counts, p99s, SLO budgets, breakers) is None and
named in ``Snapshot.missing``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from confluent_kafka import KafkaException
from rich.console import Group
from rich.table import Table

from processor.config import Settings
from processor.errors import DependencyUnavailable
from processor.kafka.lag import PartitionLag, read_lag
from processor.observability.burrow import LagEvaluator, Sample, worst
from processor.observability.forecast import LagTrend, lag_thresholds
from processor.observability.metrics import LAG_STATUSES
from processor.observability.scrape import Scrape, scrape
from processor.topology.topology import Topology

BREAKER_STATES = ("closed", "half-open", "open")
# Read from the broker, a group's lag status comes from this many reads this far apart (Burrow's rules,
# processor.observability.burrow): enough to see whether a group with members commits, and a group without members
# with lag is STOP at once (nobody can move its committed offset).
BROKER_READS = 3
BROKER_READ_INTERVAL_SECONDS = 1.0
MISSING_WITHOUT_METRICS = ("handlers' outcome counts", "p99 processing and end-to-end", "SLO budgets and burn rates",
                           "breakers")


@dataclass(frozen=True)
class LagRow:
    group: str
    topic: str
    partition: int
    messages: int
    seconds: float


@dataclass(frozen=True)
class HandlerRow:
    """One handler's counts and p99s; every field but the name is None when no worker's metrics answered."""

    handler: str
    success: int | None = None
    duplicate: int | None = None
    retried: int | None = None
    dead_lettered: int | None = None
    invalid: int | None = None
    p99_processing_ms: float | None = None
    p99_end_to_end_ms: float | None = None


@dataclass(frozen=True)
class SLORow:
    slo: str
    objective: float
    budget_remaining: float | None
    burn_rates: dict[str, float] | None  # None: no worker's metrics


@dataclass(frozen=True)
class Snapshot:
    """Everything the view shows, also what ``--json`` prints."""

    topology: str
    taken_at: float
    lag_source: str
    lag: list[LagRow] = field(default_factory=list)
    groups: dict[str, str] = field(default_factory=dict)
    # group -> {"threshold": s, "drain": s}: the monitor's lag forecast (processor.observability.forecast); a key
    # is missing while there is no forecast, and +Inf (not heading there) is null in --json, as JSON has no Inf
    forecasts: dict[str, dict[str, float]] = field(default_factory=dict)
    handlers: list[HandlerRow] = field(default_factory=list)
    slos: list[SLORow] = field(default_factory=list)
    breakers: dict[str, str] | None = field(default_factory=dict)
    metrics_url: str = ""
    metrics_error: str | None = None  # why the worker's /metrics did not answer; None: it did
    missing: list[str] = field(default_factory=list)  # what is None for want of a worker's metrics

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def missing_line(self) -> str | None:
        """The one line saying that no worker answered and what is therefore missing (None: one did)."""
        if self.metrics_error is None:
            return None
        return (f"no worker's /metrics answered at {self.metrics_url} ({self.metrics_error}): "
                f"{', '.join(self.missing)} missing; lag and lag status read from the broker")


def _ms(value: float) -> float | None:
    return round(value * 1000, 1) if value == value and value else None  # NaN and 0: nothing observed


def snapshot(topology: Topology, settings: Settings, metrics_url: str) -> Snapshot:
    """One view: the worker's metrics at ``metrics_url`` when it answers, the broker's lag either way."""
    try:
        s = scrape(metrics_url)
    except OSError as exc:
        return without_metrics(topology, metrics_url, str(exc) or type(exc).__name__, *broker_lag(topology, settings))
    lag, groups, source, forecasts = _lag(topology, settings, s)
    handlers = []
    for spec in topology.handlers:
        def count(outcome: str, handler: str = spec.name) -> int:
            return round(s.value("processor_events_total", topology=topology.name, handler=handler, outcome=outcome))

        labels = {"topology": topology.name, "handler": spec.name}
        handlers.append(HandlerRow(
            spec.name, count("success"), count("duplicate"), count("retried"), count("dead_lettered"),
            count("invalid"), _ms(s.value("processor_rolling_p99_seconds", kind="processing", **labels)),
            _ms(s.value("processor_rolling_p99_seconds", kind="end_to_end", **labels)),
        ))
    slos = []
    for slo in topology.slos:
        label = slo.label(topology.name)
        rates = {dict(k)["window"]: v for k, v in s.samples.get("processor_slo_burn_rate", {}).items()
                 if dict(k).get("slo") == label}
        remaining = s.samples.get("processor_slo_error_budget_remaining_ratio", {}).get((("slo", label),))
        slos.append(SLORow(label, slo.objective, remaining, rates))
    breakers = {dict(k)["breaker"]: BREAKER_STATES[int(v)]
                for k, v in s.samples.get("processor_circuit_state", {}).items()}
    return Snapshot(topology.name, time.time(), source, lag, groups, forecasts, handlers, slos, breakers, metrics_url)


def without_metrics(topology: Topology, metrics_url: str, error: str, lag: list[LagRow],
                    groups: dict[str, str], forecasts: dict[str, dict[str, float]]) -> Snapshot:
    """The view when no worker's metrics answered: the broker's lag, and None for what only a worker knows."""
    return Snapshot(
        topology.name, time.time(), "broker", lag, groups, forecasts,
        handlers=[HandlerRow(spec.name) for spec in topology.handlers],
        slos=[SLORow(slo.label(topology.name), slo.objective, None, None) for slo in topology.slos],
        breakers=None, metrics_url=metrics_url, metrics_error=error, missing=list(MISSING_WITHOUT_METRICS),
    )


Forecasts = dict[str, dict[str, float]]


def _lag(topology: Topology, settings: Settings, s: Scrape) -> tuple[list[LagRow], dict[str, str], str, Forecasts]:
    rows = []
    for key, messages in s.samples.get("processor_consumer_lag_messages", {}).items():
        labels = dict(key)
        if labels["group"].startswith(f"{topology.name}."):
            seconds = s.samples.get("processor_consumer_lag_seconds", {}).get(key, 0.0)
            rows.append(LagRow(labels["group"], labels["topic"], int(labels["partition"]), int(messages), seconds))
    groups = {dict(k)["group"]: dict(k)["status"] for k, v in s.samples.get("processor_consumer_lag_status", {}).items()
              if v == 1 and dict(k)["group"].startswith(f"{topology.name}.")}
    forecasts: Forecasts = {}
    for key, value in s.samples.get("processor_lag_forecast_seconds", {}).items():
        labels = dict(key)
        if labels["group"].startswith(f"{topology.name}."):
            forecasts.setdefault(labels["group"], {})[labels["until"]] = value
    if rows:
        return sorted(rows, key=lambda r: (r.group, r.topic, r.partition)), groups, "worker metrics", forecasts
    lag, groups, forecasts = broker_lag(topology, settings)
    return lag, groups, "broker", forecasts


def broker_lag(topology: Topology, settings: Settings, reads: int = BROKER_READS,
               interval_seconds: float = BROKER_READ_INTERVAL_SECONDS,
               ) -> tuple[list[LagRow], dict[str, str], Forecasts]:
    """Every group's lag per partition from the broker (the last of ``reads`` reads), and its lag status and
    forecast over those reads, as the monitor makes them (a forecast over seconds: only a steep trend shows)."""
    evaluator = LagEvaluator(window=reads, min_samples=reads)
    trend, thresholds = LagTrend(), lag_thresholds(topology)
    latest: dict[str, list[PartitionLag]] = {}
    for n in range(reads):
        if n:
            time.sleep(interval_seconds)
        for spec in topology.handlers:
            group = topology.group(spec.name)
            try:
                lags = read_lag(settings, group, [spec.source, *spec.retry_topics])
            except KafkaException as exc:
                raise DependencyUnavailable(f"cannot read the lag of {group} from the broker at "
                                            f"{settings.kafka_bootstrap_servers}: {exc}") from None
            for lag in lags:
                evaluator.add(group, lag.topic, lag.partition, Sample(lag.committed, lag.messages, lag.members))
            read_at = time.time()
            trend.add(group, read_at, max((lag.seconds(read_at) for lag in lags if lag.topic == spec.source),
                                          default=0.0))
            latest[group] = lags
    now = time.time()
    rows = [LagRow(group, lag.topic, lag.partition, lag.messages, lag.seconds(now))
            for group, lags in latest.items() for lag in lags]
    groups: dict[str, str] = {group: worst(evaluator.partition_status(group, lag.topic, lag.partition)
                                           for lag in lags) for group, lags in latest.items()}
    forecasts: Forecasts = {}
    for group in latest:
        ahead = trend.forecast(group, thresholds.get(group))
        if ahead is not None:
            forecasts[group] = {"drain": ahead.to_drain, **({"threshold": ahead.to_threshold}
                                                            if group in thresholds else {})}
    return sorted(rows, key=lambda r: (r.group, r.topic, r.partition)), groups, forecasts


def render(snap: Snapshot) -> Group:
    """The snapshot as rich tables."""
    lag = Table(title=f"{snap.topology}: consumer lag (from {snap.lag_source})", title_justify="left")
    for column in ("group", "topic", "partition", "messages", "seconds"):
        lag.add_column(column, justify="right" if column in ("partition", "messages", "seconds") else "left")
    for row in snap.lag:
        lag.add_row(row.group, row.topic, str(row.partition), str(row.messages), f"{row.seconds:.1f}")
    status = Table(title="lag status", title_justify="left")
    for column in ("group", "status", "to lag SLO threshold", "to drained"):
        status.add_column(column, justify="left" if column in ("group", "status") else "right")
    for group, value in sorted(snap.groups.items()):
        style = "green" if value == "OK" else "red" if value in LAG_STATUSES[2:] else "yellow"
        ahead = snap.forecasts.get(group, {})
        status.add_row(group, f"[{style}]{value}[/]", _until(ahead.get("threshold")),
                       _until(ahead.get("drain"), at_zero="caught up"))
    handlers = Table(title="handlers", title_justify="left")
    for column in ("handler", "success", "duplicate", "retried", "dead-lettered", "invalid", "p99 ms", "p99 e2e ms"):
        handlers.add_column(column, justify="left" if column == "handler" else "right")
    for h in snap.handlers:
        handlers.add_row(h.handler, *(_count(n) for n in (h.success, h.duplicate, h.retried, h.dead_lettered,
                                                          h.invalid)),
                         _fmt(h.p99_processing_ms), _fmt(h.p99_end_to_end_ms))
    slos = Table(title="SLOs", title_justify="left")
    for column in ("slo", "objective", "budget left", "burn 5m", "burn 1h", "burn 6h"):
        slos.add_column(column, justify="left" if column == "slo" else "right")
    for slo in snap.slos:
        left = "-" if slo.budget_remaining is None else f"{slo.budget_remaining:.1%}"
        rates = slo.burn_rates or {}
        slos.add_row(slo.slo, f"{slo.objective:.2%}", left,
                     *(_fmt(rates.get(w), "{:.2f}x") for w in ("5m", "1h", "6h")))
    breakers = "-" if snap.breakers is None else (
        ", ".join(f"{name}: {state}" for name, state in sorted(snap.breakers.items())) or "none")
    worst_status = worst(v for v in snap.groups.values() if v in LAG_STATUSES)  # type: ignore[misc]
    footer = f"breakers: {breakers}    worst lag status: {worst_status}"
    missing = snap.missing_line()
    return Group(lag, status, handlers, slos, footer, *([f"[yellow]{missing}[/]"] if missing else []))


def _until(seconds: float | None, at_zero: str = "now") -> str:
    # None: no forecast yet (or no lag SLO); inf: not heading there; 0: there already.
    if seconds is None:
        return "-"
    if math.isinf(seconds):
        return "never"
    if seconds == 0:
        return at_zero
    if seconds >= 7200:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


def _fmt(value: float | None, pattern: str = "{:.1f}") -> str:
    return "-" if value is None else pattern.format(value)


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)
