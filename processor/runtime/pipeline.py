"""The path of a batch of events (from one or more partitions), top to bottom, with no Faust in sight:

    decode/validate -> dedup claim -> handler (breaker, timeout) -> store results and produce, waiting for
    both (the broker's acks) -> mark done / release claims

and the failure route: invalid -> DLQ; retryable -> next retry tier; fatal or last tier -> DLQ.

``Pipeline.run`` returns only when every record the batch produced (outputs, retries, dead letters) has
been acknowledged by the broker; it never raises because of an event, so the caller may then ack the
batch's offsets. It raises only when cancelled, and then nothing is acked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from opentelemetry import trace
from opentelemetry.trace import Span

from processor.errors import FatalError, InvalidEvent
from processor.kafka.producer import DeliveryError, OutRecord
from processor.observability.logs import event_context, redact
from processor.observability.metrics import Metrics
from processor.observability.tracing import FAILED_SPAN_HEADER, Tracing, record_failure, with_trace_headers
from processor.runtime import headers as h
from processor.runtime.breaker import Breaker, BreakerState
from processor.runtime.decode import Decoder
from processor.runtime.dedup import Claim, Dedup
from processor.runtime.timeouts import CallTimer
from processor.topology.topology import Context, HandlerSpec, Output

log = logging.getLogger(__name__)

RETRIES_EXHAUSTED = "retries_exhausted"
FATAL_ERROR = "fatal_error"
OUTPUT_REJECTED = "output_rejected"


@dataclass(frozen=True, slots=True)
class InRecord:
    """One consumed record, transport-neutral."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


class Sink(Protocol):
    async def send(self, records: Sequence[OutRecord]) -> list[DeliveryError | None]: ...


class PartitionControl(Protocol):
    """Pauses and resumes fetching for the handler's partitions (the breaker uses it)."""

    def pause_all(self, reason: str) -> None: ...

    def resume_all(self, reason: str) -> None: ...


@dataclass(slots=True, eq=False)
class _Work:
    record: InRecord
    event: dict[str, Any]
    event_id: str
    outputs: list[OutRecord] = field(default_factory=list)
    error: BaseException | None = None
    started: float = 0.0
    span: Span | None = None


class Pipeline:
    """Runs one handler over batches of records; one instance per handler per worker."""

    def __init__(
        self,
        topology: str,
        spec: HandlerSpec,
        *,
        group: str,
        decoder: Decoder,
        dedup: Dedup,
        sink: Sink,
        metrics: Metrics,
        breaker: Breaker | None = None,
        partitions: PartitionControl | None = None,
        dependencies: Mapping[str, Any] | None = None,
        observe: Callable[[float, float, float], None] = lambda processing, end_to_end, now: None,
        tracing: Tracing | None = None,
        redact: Collection[str] = (),
        clock: Callable[[], float] = time.time,
        on_dependency: Callable[[str, bool], None] = lambda name, up: None,
    ) -> None:
        self.topology = topology
        self.spec = spec
        self.group = group
        self._decoder = decoder
        self._dedup = dedup
        self._sink = sink
        self._metrics = metrics
        self._breaker = breaker
        self._partitions = partitions
        self._clock = clock
        self._on_dependency = on_dependency
        self._dependencies = dependencies or {}
        self._observe = observe
        self._tracing = tracing or Tracing(None)
        self._redact = tuple(redact)
        self._labels = (topology, spec.name)

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
            claimed, replayed, skipped = await self._claim(works, token)
            duplicates += skipped
            started = time.monotonic()
            await self._handle_all(claimed)
            per_event = (time.monotonic() - started) / len(claimed) if claimed else None
            succeeded = [w for w in claimed if w.error is None]
            failed = [w for w in claimed if w.error is not None]
            for work in failed:
                assert work.error is not None
                with self._log_context(work.record, work.event_id), self._in_span(work.span):
                    out = self._route(work.record, work.event_id, work.error, work.event)
                routed.append(self._send_span(out, work.span, sends, failed=True))
            for work in succeeded:
                work.outputs = [self._send_span(out, work.span, sends) for out in work.outputs]
            # The results are stored while the outputs are produced, not before: an event's end-to-end time
            # then holds one Redis round trip less. Stored results spare a redelivered event its handler only
            # once they are in Redis, so a crash before that re-runs the handler either way; what a crash
            # in between adds is a second copy of outputs that reached the broker, which the event id in
            # their headers marks, as it does the stored outputs a redelivered event produces again.
            stored, delivered = await asyncio.gather(
                self._dedup.store_results([(w.event_id, _encode_outputs(w.outputs)) for w in succeeded], token),
                self._deliver([*succeeded, *replayed], routed),
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

    # -- decode/validate -------------------------------------------------------------------------------

    def _decode(self, records: Sequence[InRecord], routed: list[OutRecord], sends: list[Span]) -> list[_Work]:
        works = []
        for record in records:
            try:
                event, event_id = self._decoder.decode(record.value, record.headers)
            except InvalidEvent as exc:
                self._metrics.record_outcome(*self._labels, "invalid")
                span = self._process_span(record, {"processor.invalid.reason": exc.reason})
                if span is not None:
                    record_failure(span, exc)
                    span.end()
                with self._log_context(record, None), self._in_span(span):
                    out = self._dead_letter(record, None, exc, exc.reason)
                routed.append(self._send_span(out, span, sends))
                continue
            works.append(_Work(record, event, event_id))
        return works

    def _drop_batch_duplicates(self, works: list[_Work]) -> tuple[list[_Work], int]:
        # The first copy in a batch carries the event; later copies are duplicates whatever its fate.
        seen: set[str] = set()
        unique = []
        for work in works:
            if work.event_id not in seen:
                seen.add(work.event_id)
                unique.append(work)
            else:
                self._trace_skip(work, "duplicate")
        return unique, len(works) - len(unique)

    # -- dedup -----------------------------------------------------------------------------------------

    async def _claim(self, works: list[_Work], token: str) -> tuple[list[_Work], list[_Work], int]:
        """Split into (claimed: run the handler, replayed: stored outputs to produce, duplicates)."""
        claimed: list[_Work] = []
        replayed: list[_Work] = []
        duplicates = 0
        pending = works
        wait = 0.05
        while pending:
            busy = []
            results = await self._dedup.claim([w.event_id for w in pending], token)
            for work, result in zip(pending, results, strict=True):
                if result.status is Claim.CLAIMED:
                    claimed.append(work)
                elif result.status is Claim.DONE:
                    duplicates += 1
                    self._trace_skip(work, "duplicate")
                elif result.status is Claim.STORED:
                    work.outputs = _decode_outputs(result.stored)
                    replayed.append(work)
                else:
                    busy.append(work)
            if busy:
                # Another processor holds these ids (a copy on another partition, or a batch from before a
                # rebalance, here or on another replica): wait for its outcome, never process alongside it.
                # Claims are taken in one order everywhere (Dedup.claim), so two waiting batches never
                # hold what the other waits for.
                await asyncio.sleep(wait)
                wait = min(wait * 2, 1.0)
            pending = busy
        order = {id(w): i for i, w in enumerate(works)}
        claimed.sort(key=lambda w: order[id(w)])
        return claimed, replayed, duplicates

    # -- handler ---------------------------------------------------------------------------------------

    async def _handle_all(self, works: list[_Work]) -> None:
        """Run the handler over ``works``, each partition's (topic and partition) side by side and each as
        ``_handle_partition`` runs it. A batch may hold several partitions (processor.runtime.partitions), and
        ``concurrency`` is per partition, as when each partition's records were a batch of their own: one
        slow handler call holds back only the events behind it on its partition."""
        partitions: dict[tuple[str, int], list[_Work]] = {}
        for work in works:
            partitions.setdefault((work.record.topic, work.record.partition), []).append(work)
        if len(partitions) == 1:
            await self._handle_partition(works)
            return
        await asyncio.gather(*(self._handle_partition(part) for part in partitions.values()))

    async def _handle_partition(self, works: list[_Work]) -> None:
        """Run the handler over one partition's ``works``: events with the same key in offset order, and up
        to ``spec.concurrency`` keys at once (one at a time when concurrency is 1)."""
        if self.spec.concurrency == 1:
            await self._handle_chain(works)
            return
        chains: dict[object, list[_Work]] = {}
        for work in works:
            # Unkeyed events promise no order: each is a chain of its own.
            chains.setdefault(work.record.key if work.record.key is not None else id(work), []).append(work)
        slots = asyncio.Semaphore(self.spec.concurrency)

        async def run_chain(chain: list[_Work]) -> None:
            async with slots:
                await self._handle_chain(chain)

        await asyncio.gather(*(run_chain(chain) for chain in chains.values()))

    async def _handle_chain(self, works: list[_Work]) -> None:
        """One after another in this task, each call limited by one timer for them all."""
        timer = CallTimer(self.spec.timeout_seconds)
        try:
            for work in works:
                await self._handle(work, timer)
        finally:
            timer.close()

    async def _handle(self, work: _Work, timer: CallTimer) -> None:
        record = work.record
        attempts = h.attempts_of(record.headers)
        ctx = Context(
            topology=self.topology, handler=self.spec.name, event_id=work.event_id, topic=record.topic,
            partition=record.partition, offset=record.offset, attempt=attempts + 1, key=record.key,
            headers=record.headers, dependencies=self._dependencies,
        )
        with self._log_context(record, work.event_id):
            work.started = self._clock()
            work.span = self._process_span(record, self._span_attributes(attempts, work.event_id))
            try:
                with self._in_span(work.span):
                    outputs = await self._call(work.event, ctx, timer)
                    work.outputs = [self._encode_output(o, record, work.event_id) for o in outputs]
                    log.debug("handled (attempt %d): %d output(s)", attempts + 1, len(work.outputs))
            except Exception as exc:
                work.error = exc
                if work.span is not None:
                    record_failure(work.span, exc)
            if work.span is not None:
                work.span.end()

    def _log_context(self, record: InRecord, event_id: str | None) -> contextlib.AbstractContextManager[None]:
        """Every log line inside names the event: topology, handler, position, id and trace id."""
        return event_context(
            topology=self.topology, handler=self.spec.name, topic=record.topic, partition=record.partition,
            offset=record.offset, event_id=event_id, traceparent=record.headers.get("traceparent"),
        )

    @staticmethod
    def _in_span(span: Span | None) -> contextlib.AbstractContextManager[Any]:
        return trace.use_span(span, end_on_exit=False) if span is not None else contextlib.nullcontext()

    # -- tracing (every call is a no-op when tracing is off) --------------------------------------------

    def _process_span(self, record: InRecord, attributes: Mapping[str, str | int | bool]) -> Span | None:
        if not self._tracing.enabled:
            return None
        return self._tracing.start_process(record.topic, record.partition, record.offset, record.key, self.group,
                                           record.headers, attributes)

    def _span_attributes(self, attempts: int, event_id: str) -> dict[str, str | int | bool]:
        if not self._tracing.enabled:
            return {}
        attributes: dict[str, str | int | bool] = {
            "processor.handler": self.spec.name, "processor.attempt": attempts + 1, "messaging.message.id": event_id,
        }
        if attempts:
            attributes["processor.retry.tier"] = self.spec.retry.tier_names()[min(attempts, len(self.spec.retry_topics))
                                                                              - 1]
        if self._breaker is not None:
            attributes["processor.breaker.state"] = self._breaker.state.name.lower()
        return attributes

    def _send_span(self, out: OutRecord, parent: Span | None, sends: list[Span], failed: bool = False) -> OutRecord:
        """Give ``out`` a ``send`` span under ``parent`` (a sampled one) and the trace headers that continue it."""
        if parent is None:
            return out
        # Not sampled: its send span would not be sampled either, so nothing would export it; the record carries
        # the process span's context instead (the trace id and the "not sampled" flag that consumers continue).
        span = parent
        if parent.get_span_context().trace_flags.sampled:
            attributes: dict[str, str | int | bool] = {}
            tiers = self.spec.retry_topics
            if out.topic in tiers:
                attributes["processor.retry.tier"] = self.spec.retry.tier_names()[tiers.index(out.topic)]
            span = self._tracing.start_send(parent, out.topic, out.key, attributes)
            sends.append(span)
        headers = with_trace_headers(out.headers, span)
        if failed:
            headers.append((FAILED_SPAN_HEADER, dict(Tracing.headers_of(parent))["traceparent"]))
        return OutRecord(out.topic, out.value, out.key, headers)

    def _trace_skip(self, work: _Work, reason: str) -> None:
        span = self._process_span(work.record, {"processor.dedup.outcome": reason,
                                                "messaging.message.id": work.event_id})
        if span is not None:
            span.end()

    async def _call(self, event: dict[str, Any], ctx: Context, timer: CallTimer) -> Sequence[Output]:
        breaker = self._breaker
        while True:
            if breaker is not None and not breaker.allow():
                await self._hold_while_open(breaker)  # returns holding a call slot
            try:
                outputs = await timer.run(self.spec.func(event, ctx))
            except Exception as exc:
                if breaker is not None and self.spec.retry.is_retryable(exc):
                    breaker.record(False)
                    if breaker.state is not BreakerState.CLOSED:
                        # The dependency is down: keep this event and try again when the breaker
                        # half-opens, instead of burning it into the retry tiers or the DLQ.
                        continue
                elif breaker is not None:
                    # A non-retryable error is the event's fault, not the dependency's: the call went through.
                    breaker.record(True)
                raise
            except BaseException:
                if breaker is not None:
                    breaker.abandon()  # cancelled mid-call: give a half-open probe slot back
                raise
            if breaker is not None:
                breaker.record(True)
            return outputs or ()

    async def _hold_while_open(self, breaker: Breaker) -> None:
        if self._partitions is not None:
            self._partitions.pause_all("breaker")
        try:
            await breaker.wait_until_allowed()
        finally:
            if self._partitions is not None:
                self._partitions.resume_all("breaker")

    def _encode_output(self, output: Output, source: InRecord, event_id: str) -> OutRecord:
        if output.topic not in self.spec.outputs:
            raise FatalError(f"output topic {output.topic!r} is not declared in outputs={self.spec.outputs}")
        try:
            value = orjson.dumps(output.value)
        except TypeError as exc:
            raise FatalError(f"output to {output.topic} is not JSON-serialisable: {exc}") from None
        key = output.key.encode() if isinstance(output.key, str) else output.key
        headers = [(k, v) for k, v in source.headers.items() if k in h.TRACE_HEADERS]
        headers.append((h.EVENT_ID, event_id.encode()))
        return OutRecord(output.topic, value, key if key is not None else source.key, headers)

    # -- failure routing -------------------------------------------------------------------------------

    def _route(self, record: InRecord, event_id: str, exc: BaseException, event: dict[str, Any]) -> OutRecord:
        attempts = h.attempts_of(record.headers) + 1
        tiers = self.spec.retry_topics
        if not self.spec.retry.is_retryable(exc):
            return self._dead_letter(record, event_id, exc, FATAL_ERROR, event)
        if attempts > len(tiers):
            return self._dead_letter(record, event_id, exc, RETRIES_EXHAUSTED, event)
        tier = attempts - 1
        log.warning("attempt %d failed (%s: %s); retrying in tier %s", attempts, type(exc).__name__, exc,
                    self.spec.retry.tier_names()[tier], extra={"event": redact(event, self._redact)})
        now_ms = int(self._clock() * 1000)
        due_ms = now_ms + int(self.spec.retry.delay_seconds(tier) * 1000)
        headers = self._failure_headers(record, event_id, exc, attempts, "retry", due_ms)
        self._metrics.record_retry(*self._labels, self.spec.retry.tier_names()[tier], type(exc).__name__)
        self._metrics.record_outcome(*self._labels, "retried")
        return OutRecord(tiers[tier], record.value, record.key, headers)

    def _dead_letter(
        self, record: InRecord, event_id: str | None, exc: BaseException, reason: str,
        event: dict[str, Any] | None = None,
    ) -> OutRecord:
        attempts = h.attempts_of(record.headers) + (0 if isinstance(exc, InvalidEvent) else 1)
        log.warning("dead-lettered (%s) after %d attempt(s): %s: %s", reason, attempts, type(exc).__name__, exc,
                    extra={"event": redact(event, self._redact)} if event is not None else None)
        headers = self._failure_headers(record, event_id, exc, attempts, reason, None)
        self._metrics.record_dead_letter(*self._labels, reason)
        if not isinstance(exc, InvalidEvent):
            self._metrics.record_outcome(*self._labels, "dead_lettered")
        return OutRecord(self.spec.dlq_topic, record.value, record.key, headers)

    def _failure_headers(
        self, record: InRecord, event_id: str | None, exc: BaseException, attempts: int, reason: str,
        due_ms: int | None,
    ) -> list[tuple[str, bytes]]:
        origin = h.Origin.of(record.headers, record.topic, record.partition, record.offset, record.timestamp_ms)
        return h.failure_headers(
            origin=origin, incoming=record.headers, topology=self.topology, handler=self.spec.name,
            group=self.group, event_id=event_id, attempts=attempts, now_ms=int(self._clock() * 1000),
            reason=reason, exc=exc, due_ms=due_ms,
        )

    # -- delivery --------------------------------------------------------------------------------------

    async def _deliver(self, works: list[_Work], routed: list[OutRecord]) -> list[_Work]:
        """Produce every output and routed record and wait for the broker; returns works whose outputs the
        broker refused for good (they are dead-lettered instead)."""
        owners: list[_Work | None] = []
        records: list[OutRecord] = []
        for work in works:
            for out in work.outputs:
                owners.append(work)
                records.append(out)
        owners += [None] * len(routed)
        records += routed
        rejected: list[_Work] = []
        wait = 0.1
        kafka_down = False
        while records:
            errors = await self._sink.send(records)
            next_owners: list[_Work | None] = []
            next_records: list[OutRecord] = []
            transient = False
            for owner, record, error in zip(owners, records, errors, strict=True):
                if error is None:
                    continue
                if owner is None and error.too_large and not _is_truncated(record):
                    # A retry or DLQ record too large to produce (an oversized input plus our headers): keep
                    # the entry, with the value cut; its headers point at the original record.
                    next_owners.append(None)
                    next_records.append(_truncated(record))
                    continue
                if owner is not None and not error.retriable:
                    if all(owner is not r for r in rejected):
                        rejected.append(owner)
                        refused = FatalError(f"the broker refused an output to {record.topic}: {error.message}")
                        next_owners.append(None)
                        next_records.append(self._dead_letter(owner.record, owner.event_id, refused, OUTPUT_REJECTED))
                    continue
                # Transient (broker away, leader moving), or a retry/DLQ record that must not be lost:
                # send it again; the partition stalls rather than losing the event.
                log.warning("delivery to %s failed (%s); sending again", record.topic, error.message)
                transient = True
                next_owners.append(owner)
                next_records.append(record)
            if transient:
                kafka_down = True
                self._on_dependency("kafka", False)
                await asyncio.sleep(wait)
                wait = min(wait * 2, 5.0)
            owners, records = next_owners, next_records
        if kafka_down:
            self._on_dependency("kafka", True)
        return rejected

    def _record_done(self, done: Sequence[_Work], duplicates: int) -> None:
        now = self._clock()
        self._metrics.record_outcome(*self._labels, "duplicate", duplicates)
        self._metrics.record_outcome(*self._labels, "success", len(done))
        processing = self._metrics.processing.labels(*self._labels)
        end_to_end = self._metrics.end_to_end.labels(*self._labels)
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


TRUNCATED_VALUE_BYTES = 64 * 1024


def _is_truncated(record: OutRecord) -> bool:
    return any(k == h.VALUE_TRUNCATED for k, _ in record.headers)


def _truncated(record: OutRecord) -> OutRecord:
    size = len(record.value or b"")
    value = (record.value or b"")[:TRUNCATED_VALUE_BYTES]
    return OutRecord(record.topic, value, record.key, [*record.headers, (h.VALUE_TRUNCATED, str(size).encode())])


def _encode_outputs(outputs: Sequence[OutRecord]) -> bytes:
    return orjson.dumps([
        [o.topic, o.value.decode() if o.value is not None else None,
         o.key.decode("latin-1") if o.key is not None else None,
         [[k, v.decode("latin-1")] for k, v in o.headers]]
        for o in outputs
    ])


def _decode_outputs(payload: bytes) -> list[OutRecord]:
    return [
        OutRecord(topic, value.encode() if value is not None else None,
                  key.encode("latin-1") if key is not None else None,
                  [(k, v.encode("latin-1")) for k, v in headers])
        for topic, value, key, headers in orjson.loads(payload)
    ]
