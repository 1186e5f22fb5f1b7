"""SLOs: what a topology promises, the SLI behind each promise, and the burn-rate windows to watch.

Three kinds of SLI, all read from the worker's own metrics:

- ``latency``: the share of events whose processing time is within ``threshold``
  (``processor_processing_seconds``; the threshold must be a histogram bucket bound);
- ``delivery``: the share of finished events that were processed rather than dead-lettered
  (``processor_events_total``; invalid input is the producer's fault and is not counted);
- ``lag``: the share of time the consumer lag stays under ``threshold`` seconds
  (``processor_consumer_lag_seconds``, sampled by the monitor).

Burn-rate alerts follow the SRE Workbook's multi-window pairs for a 30-day SLO, scaled to the SLO's own
window: page on 1h/5m at 14.4x and 6h/30m at 6x, ticket on 1d/2h at 3x and 3d/6h at 1x.

On little traffic one event decides a ratio: one failure in ten events is a 10% error ratio, a 100x burn of a
99.9% budget. So a burn-rate alert of an events SLI (latency, delivery) also needs ``min_events`` events in
its long window (default 100: below it a single event is at least 1% of the window). A lag SLI counts time,
not events, and has no such gate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from processor.errors import ConfigError
from processor.observability.metrics import LATENCY_BUCKETS
from processor.topology.retry import parse_duration

SLIKind = Literal["latency", "delivery", "lag"]
Severity = Literal["page", "ticket"]
_WINDOW = re.compile(r"^(\d+)([mhd])$")
_WINDOW_SECONDS = {"m": 60, "h": 3600, "d": 86400}
REFERENCE_WINDOW_SECONDS = 30 * 86400


def window_seconds(text: str) -> int:
    """``"30d"``, ``"6h"``, ``"5m"`` -> seconds (Prometheus range syntax, whole units)."""
    match = _WINDOW.match(text)
    if not match:
        raise ConfigError(f"SLO window {text!r} is not a whole number of m, h or d (e.g. 30d)")
    return int(match.group(1)) * _WINDOW_SECONDS[match.group(2)]


def prometheus_range(seconds: float) -> str:
    """The largest whole unit that spells ``seconds`` (rounded down to a minute at least)."""
    seconds = max(60, int(seconds) // 60 * 60)
    for unit in ("d", "h", "m"):
        size = _WINDOW_SECONDS[unit]
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds // 60}m"


@dataclass(frozen=True)
class BurnWindow:
    """One multi-window burn-rate alert condition: both windows above ``factor`` x the budget rate."""

    long: str
    short: str
    factor: float
    severity: Severity


# The SRE Workbook's pairs for a 30-day SLO (chapter 5, "Multiwindow, Multi-Burn-Rate Alerts").
REFERENCE_BURN_WINDOWS = (
    BurnWindow("1h", "5m", 14.4, "page"),
    BurnWindow("6h", "30m", 6.0, "page"),
    BurnWindow("1d", "2h", 3.0, "ticket"),
    BurnWindow("3d", "6h", 1.0, "ticket"),
)


@dataclass(frozen=True)
class SLO:
    """One objective of a topology, e.g. 99.9% of events processed within 500 ms over 30 days."""

    name: str
    sli: SLIKind
    objective: float
    window: str = "30d"
    threshold: str | None = None
    handler: str | None = None
    description: str = ""
    min_events: int = 100  # in a burn alert's long window, for it to fire (0: no gate); see the module docstring

    def __post_init__(self) -> None:
        if not re.match(r"^[a-z0-9][a-z0-9_-]*$", self.name):
            raise ConfigError(f"SLO name {self.name!r}: use lower-case letters, digits, '-' and '_'")
        if not 0.0 < self.objective < 1.0:
            raise ConfigError(f"SLO {self.name}: objective {self.objective} must be between 0 and 1, e.g. 0.999")
        window_seconds(self.window)
        if self.min_events < 0:
            raise ConfigError(f"SLO {self.name}: min_events {self.min_events} must be 0 (no gate) or more")
        if self.sli in ("latency", "lag") and self.threshold is None:
            raise ConfigError(f"SLO {self.name}: a {self.sli} SLO needs a threshold, e.g. threshold='500ms'")
        if self.sli == "latency" and self.threshold_seconds not in LATENCY_BUCKETS:
            bounds = ", ".join(f"{b:g}" for b in LATENCY_BUCKETS)
            raise ConfigError(f"SLO {self.name}: latency threshold must be a histogram bucket bound ({bounds} s)")

    @property
    def threshold_seconds(self) -> float:
        return parse_duration(self.threshold) if self.threshold else 0.0

    @property
    def error_budget(self) -> float:
        """The allowed share of bad events (or bad time): 1 - objective."""
        return 1.0 - self.objective

    @property
    def window_seconds(self) -> int:
        return window_seconds(self.window)

    def burn_windows(self) -> tuple[BurnWindow, ...]:
        """The Workbook's windows, scaled from 30 days to this SLO's window."""
        scale = self.window_seconds / REFERENCE_WINDOW_SECONDS
        return tuple(
            BurnWindow(prometheus_range(window_seconds(w.long) * scale),
                       prometheus_range(window_seconds(w.short) * scale), w.factor, w.severity)
            for w in REFERENCE_BURN_WINDOWS
        )

    def label(self, topology: str) -> str:
        """The value of the ``slo`` label: unique across topologies."""
        return f"{topology}:{self.name}"
