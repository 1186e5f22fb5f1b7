"""The handler step of a batch: each partition's events side by side, events with one key in offset order,
up to ``concurrency`` keys at once, every call under the handler's timeout and behind its circuit breaker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import orjson

from processor.errors import FatalError
from processor.observability.tracing import record_failure
from processor.runtime import headers as h
from processor.runtime.breaker import Breaker, BreakerState
from processor.runtime.records import InRecord, OutRecord
from processor.runtime.scope import HandlerScope
from processor.runtime.spans import Spans
from processor.runtime.timeouts import CallTimer
from processor.runtime.work import Work
from processor.topology.topology import Context, Output

log = logging.getLogger(__name__)


class PartitionControl(Protocol):
    """Pauses and resumes fetching for the handler's partitions (the breaker uses it)."""

    def pause_all(self, reason: str, *, park: bool = False) -> None: ...

    def resume_all(self, reason: str) -> None: ...


class Handling:
    """Runs one handler's calls; each work ends with its encoded outputs or its error."""

    def __init__(
        self, scope: HandlerScope, *, breaker: Breaker | None = None, partitions: PartitionControl | None = None,
        dependencies: Mapping[str, Any] | None = None,
    ) -> None:
        self._scope = scope
        self._spec = scope.spec
        self._breaker = breaker
        self._partitions = partitions
        self._dependencies = dependencies or {}
        self.spans = Spans(scope, breaker)

    def pause_with(self, partitions: PartitionControl) -> None:
        """While the breaker is open, hold the handler's partitions at ``partitions`` (its queues, which run
        this handling: hence set after both exist)."""
        self._partitions = partitions

    async def run_all(self, works: list[Work]) -> None:
        """Run the handler over ``works``, each partition's (topic and partition) side by side and each as
        ``_run_partition`` runs it. A batch may hold several partitions (processor.runtime.partitions), and
        ``concurrency`` is per partition, as when each partition's records were a batch of their own: one
        slow handler call holds back only the events behind it on its partition."""
        partitions: dict[tuple[str, int], list[Work]] = {}
        for work in works:
            partitions.setdefault((work.record.topic, work.record.partition), []).append(work)
        if len(partitions) == 1:
            await self._run_partition(works)
            return
        await asyncio.gather(*(self._run_partition(part) for part in partitions.values()))

    async def _run_partition(self, works: list[Work]) -> None:
        """Run the handler over one partition's ``works``: events with the same key in offset order, and up
        to ``spec.concurrency`` keys at once (one at a time when concurrency is 1)."""
        concurrency = min(self._spec.concurrency, self._scope.levers.concurrency or self._spec.concurrency)
        if concurrency == 1:
            await self._run_chain(works)
            return
        chains: dict[object, list[Work]] = {}
        for work in works:
            # Unkeyed events promise no order: each is a chain of its own.
            chains.setdefault(work.record.key if work.record.key is not None else id(work), []).append(work)
        slots = asyncio.Semaphore(concurrency)

        async def run_chain(chain: list[Work]) -> None:
            async with slots:
                await self._run_chain(chain)

        await asyncio.gather(*(run_chain(chain) for chain in chains.values()))

    async def _run_chain(self, works: list[Work]) -> None:
        """One after another in this task, each call limited by one timer for them all."""
        timer = CallTimer(self._spec.timeout_seconds)
        try:
            for work in works:
                await self._run(work, timer)
        finally:
            timer.close()

    async def _run(self, work: Work, timer: CallTimer) -> None:
        record = work.record
        attempts = h.attempts_of(record.headers)
        ctx = Context(
            topology=self._scope.topology, handler=self._spec.name, event_id=work.event_id, topic=record.topic,
            partition=record.partition, offset=record.offset, attempt=attempts + 1, key=record.key,
            headers=record.headers, dependencies=self._dependencies,
        )
        with self._scope.log_context(record, work.event_id):
            work.started = self._scope.clock()
            work.span = self.spans.process(record, self.spans.attributes(attempts, work.event_id))
            try:
                with self.spans.current(work.span):
                    outputs = await self._call(work.event, ctx, timer)
                    work.outputs = [self._encode(o, record, work.event_id) for o in outputs]
                    log.debug("handled (attempt %d): %d output(s)", attempts + 1, len(work.outputs))
            except Exception as exc:
                work.error = exc
                if work.span is not None:
                    record_failure(work.span, exc)
            if work.span is not None:
                work.span.end()

    async def _call(self, event: dict[str, Any], ctx: Context, timer: CallTimer) -> Sequence[Output]:
        breaker = self._breaker
        while True:
            if breaker is not None and not breaker.allow():
                await self._hold_while_open(breaker)  # returns holding a call slot
            try:
                outputs = await timer.run(self._spec.func(event, ctx))
            except Exception as exc:
                if breaker is not None and self._spec.retry.is_retryable(exc):
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

    def _encode(self, output: Output, source: InRecord, event_id: str) -> OutRecord:
        if output.topic not in self._spec.outputs:
            raise FatalError(f"output topic {output.topic!r} is not declared in outputs={self._spec.outputs}")
        try:
            value = orjson.dumps(output.value)
        except TypeError as exc:
            raise FatalError(f"output to {output.topic} is not JSON-serialisable: {exc}") from None
        key = output.key.encode() if isinstance(output.key, str) else output.key
        headers = [(k, v) for k, v in source.headers.items() if k in h.TRACE_HEADERS]
        headers.append((h.EVENT_ID, event_id.encode()))
        return OutRecord(output.topic, value, key if key is not None else source.key, headers)
