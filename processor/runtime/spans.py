"""The pipeline's spans: a process span per event, a send span per record produced, and the trace headers
that continue them on the next topic. Every call is a no-op when tracing is off."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span

from processor.observability.tracing import FAILED_SPAN_HEADER, Tracing, with_trace_headers
from processor.runtime.breaker import Breaker
from processor.runtime.records import InRecord, OutRecord
from processor.runtime.scope import HandlerScope
from processor.runtime.work import Work


class Spans:
    """Spans for one handler's events."""

    def __init__(self, scope: HandlerScope, breaker: Breaker | None = None) -> None:
        self._scope = scope
        self._tracing = scope.tracing
        self._breaker = breaker

    @staticmethod
    def current(span: Span | None) -> contextlib.AbstractContextManager[Any]:
        """``span`` as the current span inside (log lines then carry its trace id)."""
        return trace.use_span(span, end_on_exit=False) if span is not None else contextlib.nullcontext()

    def process(self, record: InRecord, attributes: Mapping[str, str | int | bool]) -> Span | None:
        """A started process span for ``record``, continuing the trace its headers carry."""
        if not self._tracing.enabled:
            return None
        return self._tracing.start_process(record.topic, record.partition, record.offset, record.key,
                                           self._scope.group, record.headers, attributes)

    def attributes(self, attempts: int, event_id: str) -> dict[str, str | int | bool]:
        """The attributes of a handler call's process span."""
        if not self._tracing.enabled:
            return {}
        spec = self._scope.spec
        attributes: dict[str, str | int | bool] = {
            "processor.handler": spec.name, "processor.attempt": attempts + 1, "messaging.message.id": event_id,
        }
        if attempts:
            attributes["processor.retry.tier"] = spec.retry.tier_names()[min(attempts, len(spec.retry_topics)) - 1]
        if self._breaker is not None:
            attributes["processor.breaker.state"] = self._breaker.state.name.lower()
        return attributes

    def send(self, out: OutRecord, parent: Span | None, sends: list[Span], failed: bool = False) -> OutRecord:
        """Give ``out`` a ``send`` span under ``parent`` (a sampled one) and the trace headers that continue it;
        the span goes on ``sends``, to be ended once the broker has the record."""
        if parent is None:
            return out
        # Not sampled: its send span would not be sampled either, so nothing would export it; the record carries
        # the process span's context instead (the trace id and the "not sampled" flag that consumers continue).
        span = parent
        if parent.get_span_context().trace_flags.sampled:
            attributes: dict[str, str | int | bool] = {}
            spec = self._scope.spec
            if out.topic in spec.retry_topics:
                attributes["processor.retry.tier"] = spec.retry.tier_names()[spec.retry_topics.index(out.topic)]
            span = self._tracing.start_send(parent, out.topic, out.key, attributes)
            sends.append(span)
        headers = with_trace_headers(out.headers, span)
        if failed:
            headers.append((FAILED_SPAN_HEADER, dict(Tracing.headers_of(parent))["traceparent"]))
        return OutRecord(out.topic, out.value, out.key, headers)

    def skip(self, work: Work, reason: str) -> None:
        """A process span that says why ``work`` ran no handler (a duplicate)."""
        span = self.process(work.record, {"processor.dedup.outcome": reason, "messaging.message.id": work.event_id})
        if span is not None:
            span.end()
