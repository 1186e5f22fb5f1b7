"""The path of a batch of events (from one or more partitions), top to bottom, with no Faust in sight:

    decode/validate (decode) -> dedup claim (claims) -> handler, breaker, timeout (handling) -> store results
    and produce, waiting for both: the broker's acks (delivery) -> mark done / release claims

and the failure route (routing): invalid -> DLQ; retryable -> next retry tier; fatal or last tier -> DLQ.

``Pipeline.run`` returns only when every record the batch produced (outputs, retries, dead letters) has
been acknowledged by the broker; it never raises because of an event, so the caller may then ack the
batch's offsets. It raises only when cancelled, and then nothing is acked.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from opentelemetry.trace import Span

from processor.errors import InvalidEvent
from processor.observability.tracing import record_failure
from processor.runtime import headers as h
from processor.runtime.claims import claim_all
from processor.runtime.decode import Decoder
from processor.runtime.dedup import Dedup
from processor.runtime.delivery import Delivery, Sink
from processor.runtime.handling import Handling
from processor.runtime.records import InRecord, OutRecord, pack_outputs
from processor.runtime.routing import Router
from processor.runtime.scope import HandlerScope
from processor.runtime.work import Work


def _no_observer(processing: float, end_to_end: float, now: float) -> None:
    return None


def _no_dependency_report(name: str, up: bool) -> None:
    return None


class Pipeline:
    """Runs one handler over batches of records; one instance per handler per worker."""

    def __init__(
        self,
        scope: HandlerScope,
        *,
        decoder: Decoder,
        dedup: Dedup,
        sink: Sink,
        handling: Handling | None = None,
        observe: Callable[[float, float, float], None] = _no_observer,
        on_dependency: Callable[[str, bool], None] = _no_dependency_report,
    ) -> None:
        self.scope = scope
        self._decoder = decoder
        self._dedup = dedup
        self._handling = handling or Handling(scope)
        self._spans = self._handling.spans
        self._router = Router(scope)
        self._delivery = Delivery(sink, self._router, on_dependency)
        self._observe = observe

    async def run(self, records: Sequence[InRecord]) -> float | None:
        """Process ``records`` (each partition's in offset order) to completion; see the module docstring.

        Returns the batch's time in handler calls per event that ran its handler (None if none did):
        the part of a batch's run time that grows with its size, by which the partition queues size
        batches. Events that ran no handler (duplicates of done events) must not make it look cheap."""
        routed: list[OutRecord] = []  # retry and DLQ records
        sends: list[Span] = []  # send spans, ended once the broker has the records
        token = self._dedup.new_token()
        works = self._decode(records, routed, sends)
        works, duplicates = self._drop_batch_duplicates(works)
        async with self._dedup.holding([w.event_id for w in works], token):
            claimed, replayed, skipped = await claim_all(self._dedup, works, token, self._spans)
            duplicates += skipped
            started = time.monotonic()
            await self._handling.run_all(claimed)
            per_event = (time.monotonic() - started) / len(claimed) if claimed else None
            succeeded = [w for w in claimed if w.error is None]
            failed = [w for w in claimed if w.error is not None]
            for work in failed:
                assert work.error is not None
                with self.scope.log_context(work.record, work.event_id), self._spans.current(work.span):
                    out = self._router.route(work.record, work.event_id, work.error, work.event)
                routed.append(self._spans.send(out, work.span, sends, failed=True))
            for work in succeeded:
                work.outputs = [self._spans.send(out, work.span, sends) for out in work.outputs]
            # The results are stored while the outputs are produced, not before: an event's end-to-end time
            # then holds one Redis round trip less. Stored results spare a redelivered event its handler only
            # once they are in Redis, so a crash before that re-runs the handler either way; what a crash
            # in between adds is a second copy of outputs that reached the broker, which the event id in
            # their headers marks, as it does the stored outputs a redelivered event produces again.
            stored, delivered = await asyncio.gather(
                self._dedup.store_results([(w.event_id, pack_outputs(w.outputs)) for w in succeeded], token),
                self._delivery.deliver([*succeeded, *replayed], routed),
                return_exceptions=True,  # both finish before either's error stops the batch
            )
            if isinstance(stored, BaseException):
                raise stored
            if isinstance(delivered, BaseException):
                raise delivered
            rejected = delivered
            for span in sends:
                span.end()
            done = [w for w in (*succeeded, *replayed) if all(w is not r for r in rejected)]
            await self._dedup.mark_done([w.event_id for w in done])
            await self._dedup.release([w.event_id for w in failed], token)
            await self._dedup.forget([w.event_id for w in rejected])
        self._record_done(done, duplicates)
        return per_event

    def _decode(self, records: Sequence[InRecord], routed: list[OutRecord], sends: list[Span]) -> list[Work]:
        works = []
        for record in records:
            try:
                event, event_id = self._decoder.decode(record.value, record.headers)
            except InvalidEvent as exc:
                self.scope.metrics.record_outcome(*self.scope.labels, "invalid")
                span = self._spans.process(record, {"processor.invalid.reason": exc.reason})
                if span is not None:
                    record_failure(span, exc)
                    span.end()
                with self.scope.log_context(record, None), self._spans.current(span):
                    out = self._router.dead_letter(record, None, exc, exc.reason)
                routed.append(self._spans.send(out, span, sends))
                continue
            works.append(Work(record, event, event_id))
        return works

    def _drop_batch_duplicates(self, works: list[Work]) -> tuple[list[Work], int]:
        # The first copy in a batch carries the event; later copies are duplicates whatever its fate.
        seen: set[str] = set()
        unique = []
        for work in works:
            if work.event_id not in seen:
                seen.add(work.event_id)
                unique.append(work)
            else:
                self._spans.skip(work, "duplicate")
        return unique, len(works) - len(unique)

    def _record_done(self, done: Sequence[Work], duplicates: int) -> None:
        metrics, labels = self.scope.metrics, self.scope.labels
        now = self.scope.clock()
        metrics.record_outcome(*labels, "duplicate", duplicates)
        metrics.record_outcome(*labels, "success", len(done))
        processing = metrics.processing.labels(*labels)
        end_to_end = metrics.end_to_end.labels(*labels)
        for work in done:
            took = now - work.started if work.started else 0.0
            origin_ms = int(work.record.headers.get(h.ORIG_TIMESTAMP_MS, work.record.timestamp_ms))
            age = max(0.0, now - origin_ms / 1000)
            if work.started:  # replayed stored outputs ran no handler: no processing time to report
                # A sampled span's trace id rides along as an exemplar (served to OpenMetrics scrapers).
                context = work.span.get_span_context() if work.span is not None else None
                if context is not None and context.trace_flags.sampled:
                    processing.observe(took, exemplar={"trace_id": format(context.trace_id, "032x")})
                else:
                    processing.observe(took)
            end_to_end.observe(age)
            self._observe(took, age, now)
