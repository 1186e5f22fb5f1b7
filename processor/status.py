"""`processor status`: lag per partition, p99s, SLO compliance and budget, breakers, at a glance.

It reads a worker's ``/metrics``; when that worker is not the one measuring lag (see monitor.py), the lag
is read from the broker directly, so the view is complete whichever replica it points at.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Group
from rich.table import Table

from processor.burrow import worst
from processor.config import Settings
from processor.lag import read_lag
from processor.metrics import LAG_STATUSES
from processor.scrape import Scrape, scrape
from processor.topology import Topology

BREAKER_STATES = ("closed", "half-open", "open")


@dataclass(frozen=True)
class LagRow:
    group: str
    topic: str
    partition: int
    messages: int
    seconds: float


@dataclass(frozen=True)
class HandlerRow:
    handler: str
    success: int
    duplicate: int
    retried: int
    dead_lettered: int
    invalid: int
    p99_processing_ms: float | None
    p99_end_to_end_ms: float | None


@dataclass(frozen=True)
class SLORow:
    slo: str
    objective: float
    budget_remaining: float | None
    burn_rates: dict[str, float]


@dataclass(frozen=True)
class Snapshot:
    """Everything the view shows, also what ``--json`` prints."""

    topology: str
    taken_at: float
    lag_source: str
    lag: list[LagRow] = field(default_factory=list)
    groups: dict[str, str] = field(default_factory=dict)
    handlers: list[HandlerRow] = field(default_factory=list)
    slos: list[SLORow] = field(default_factory=list)
    breakers: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _ms(value: float) -> float | None:
    return round(value * 1000, 1) if value == value and value else None  # NaN and 0: nothing observed


def snapshot(topology: Topology, settings: Settings, metrics_url: str) -> Snapshot:
    s = scrape(metrics_url)
    lag, groups, source = _lag(topology, settings, s)
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
    return Snapshot(topology.name, time.time(), source, lag, groups, handlers, slos, breakers)


def _lag(topology: Topology, settings: Settings, s: Scrape) -> tuple[list[LagRow], dict[str, str], str]:
    rows = []
    for key, messages in s.samples.get("processor_consumer_lag_messages", {}).items():
        labels = dict(key)
        if labels["group"].startswith(f"{topology.name}."):
            seconds = s.samples.get("processor_consumer_lag_seconds", {}).get(key, 0.0)
            rows.append(LagRow(labels["group"], labels["topic"], int(labels["partition"]), int(messages), seconds))
    groups = {dict(k)["group"]: dict(k)["status"] for k, v in s.samples.get("processor_consumer_lag_status", {}).items()
              if v == 1 and dict(k)["group"].startswith(f"{topology.name}.")}
    if rows:
        return sorted(rows, key=lambda r: (r.group, r.topic, r.partition)), groups, "worker metrics"
    now = time.time()
    for spec in topology.handlers:
        group = topology.group(spec.name)
        lags = read_lag(settings, group, [spec.source, *spec.retry_topics])
        rows += [LagRow(group, lag.topic, lag.partition, lag.messages, lag.seconds(now)) for lag in lags]
        groups[group] = "OK" if all(lag.messages == 0 for lag in lags) else "lagging (no window: read once)"
    return rows, groups, "broker"


def render(snap: Snapshot) -> Group:
    """The snapshot as rich tables."""
    lag = Table(title=f"{snap.topology}: consumer lag (from {snap.lag_source})", title_justify="left")
    for column in ("group", "topic", "partition", "messages", "seconds"):
        lag.add_column(column, justify="right" if column in ("partition", "messages", "seconds") else "left")
    for row in snap.lag:
        lag.add_row(row.group, row.topic, str(row.partition), str(row.messages), f"{row.seconds:.1f}")
    status = Table(title="lag status", title_justify="left")
    status.add_column("group")
    status.add_column("status")
    for group, value in sorted(snap.groups.items()):
        style = "green" if value == "OK" else "red" if value in LAG_STATUSES[2:] else "yellow"
        status.add_row(group, f"[{style}]{value}[/]")
    handlers = Table(title="handlers", title_justify="left")
    for column in ("handler", "success", "duplicate", "retried", "dead-lettered", "invalid", "p99 ms", "p99 e2e ms"):
        handlers.add_column(column, justify="left" if column == "handler" else "right")
    for h in snap.handlers:
        handlers.add_row(h.handler, str(h.success), str(h.duplicate), str(h.retried), str(h.dead_lettered),
                         str(h.invalid), _fmt(h.p99_processing_ms), _fmt(h.p99_end_to_end_ms))
    slos = Table(title="SLOs", title_justify="left")
    for column in ("slo", "objective", "budget left", "burn 5m", "burn 1h", "burn 6h"):
        slos.add_column(column, justify="left" if column == "slo" else "right")
    for slo in snap.slos:
        left = "-" if slo.budget_remaining is None else f"{slo.budget_remaining:.1%}"
        slos.add_row(slo.slo, f"{slo.objective:.2%}", left,
                     *(_fmt(slo.burn_rates.get(w), "{:.2f}x") for w in ("5m", "1h", "6h")))
    breakers = ", ".join(f"{name}: {state}" for name, state in sorted(snap.breakers.items())) or "none"
    worst_status = worst(v for v in snap.groups.values() if v in LAG_STATUSES)  # type: ignore[misc]
    return Group(lag, status, handlers, slos, f"breakers: {breakers}    worst lag status: {worst_status}")


def _fmt(value: float | None, pattern: str = "{:.1f}") -> str:
    return "-" if value is None else pattern.format(value)
