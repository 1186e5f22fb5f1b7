"""The failure route of an event: a retryable failure goes to the next retry tier, due after its delay; a
fatal one, the last tier's, an invalid event or a refused output go to the dead-letter topic. Each routed
record keeps the original value and key and carries headers enough to understand and replay it
(processor.runtime.headers)."""

from __future__ import annotations

import logging
from typing import Any

from processor.errors import InvalidEvent
from processor.observability.logs import redact
from processor.runtime import headers as h
from processor.runtime.records import Headers, InRecord, OutRecord
from processor.runtime.scope import HandlerScope

log = logging.getLogger(__name__)

RETRIES_EXHAUSTED = "retries_exhausted"
FATAL_ERROR = "fatal_error"
OUTPUT_REJECTED = "output_rejected"


class Router:
    """Builds the retry or dead-letter record of a failed event, and counts it."""

    def __init__(self, scope: HandlerScope) -> None:
        self._scope = scope
        self._spec = scope.spec
        self._metrics = scope.metrics
        self._labels = scope.labels

    def route(self, record: InRecord, event_id: str, exc: BaseException, event: dict[str, Any]) -> OutRecord:
        """Where a handler failure goes: the next retry tier, or the DLQ."""
        attempts = h.attempts_of(record.headers) + 1
        tiers = self._spec.retry_topics
        if not self._spec.retry.is_retryable(exc):
            return self.dead_letter(record, event_id, exc, FATAL_ERROR, event)
        if attempts > len(tiers):
            return self.dead_letter(record, event_id, exc, RETRIES_EXHAUSTED, event)
        tier = attempts - 1
        names = self._spec.retry.tier_names()
        log.warning("attempt %d failed (%s: %s); retrying in tier %s", attempts, type(exc).__name__, exc,
                    names[tier], extra={"event": redact(event, self._scope.redact)})
        now_ms = int(self._scope.clock() * 1000)
        # A budget policy may stretch the delay while a budget burns (processor.runtime.budget_policy).
        due_ms = now_ms + int(self._spec.retry.delay_seconds(tier) * self._scope.levers.backoff_factor * 1000)
        headers = self._failure_headers(record, event_id, exc, attempts, "retry", due_ms)
        self._metrics.record_retry(*self._labels, names[tier], type(exc).__name__)
        self._metrics.record_outcome(*self._labels, "retried")
        return OutRecord(tiers[tier], record.value, record.key, headers)

    def dead_letter(
        self, record: InRecord, event_id: str | None, exc: BaseException, reason: str,
        event: dict[str, Any] | None = None,
    ) -> OutRecord:
        """The DLQ record of ``record`` (``event_id`` None: it could not be decoded)."""
        attempts = h.attempts_of(record.headers) + (0 if isinstance(exc, InvalidEvent) else 1)
        log.warning("dead-lettered (%s) after %d attempt(s): %s: %s", reason, attempts, type(exc).__name__, exc,
                    extra={"event": redact(event, self._scope.redact)} if event is not None else None)
        headers = self._failure_headers(record, event_id, exc, attempts, reason, None)
        self._metrics.record_dead_letter(*self._labels, reason)
        if not isinstance(exc, InvalidEvent):
            self._metrics.record_outcome(*self._labels, "dead_lettered")
        return OutRecord(self._spec.dlq_topic, record.value, record.key, headers)

    def _failure_headers(
        self, record: InRecord, event_id: str | None, exc: BaseException, attempts: int, reason: str,
        due_ms: int | None,
    ) -> Headers:
        origin = h.Origin.of(record.headers, record.topic, record.partition, record.offset, record.timestamp_ms)
        return h.failure_headers(
            origin=origin, incoming=record.headers, topology=self._scope.topology, handler=self._spec.name,
            group=self._scope.group, event_id=event_id, attempts=attempts, now_ms=int(self._scope.clock() * 1000),
            reason=reason, exc=exc, due_ms=due_ms,
        )
