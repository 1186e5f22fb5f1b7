"""Who is processing: one handler of one topology, as every step of its pipeline names it in records, log
lines, spans and metrics."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from processor.observability.logs import event_context
from processor.observability.metrics import Metrics
from processor.observability.tracing import Tracing
from processor.runtime.records import InRecord
from processor.topology.topology import HandlerSpec


@dataclass
class Levers:
    """What a budget policy turns while it acts (processor.runtime.budget_policy); read by the retry route
    and the handler step, set only by the policy."""

    backoff_factor: float = 1.0
    concurrency: int | None = None  # None: the handler's own


@dataclass(frozen=True)
class HandlerScope:
    """One handler's identity and the instruments every step of its pipeline shares."""

    topology: str
    spec: HandlerSpec
    group: str
    metrics: Metrics
    tracing: Tracing = field(default_factory=lambda: Tracing(None))
    redact: tuple[str, ...] = ()  # event fields masked in log lines
    clock: Callable[[], float] = time.time
    levers: Levers = field(default_factory=Levers)

    @property
    def labels(self) -> tuple[str, str]:
        """The (topology, handler) labels of its metrics."""
        return (self.topology, self.spec.name)

    def log_context(self, record: InRecord, event_id: str | None) -> contextlib.AbstractContextManager[None]:
        """Every log line inside names the event: topology, handler, position, id and trace id."""
        return event_context(
            topology=self.topology, handler=self.spec.name, topic=record.topic, partition=record.partition,
            offset=record.offset, event_id=event_id, traceparent=record.headers.get("traceparent"),
        )
