"""Per-partition queues: one batch in flight per partition, in offset order, acked only when done.

The consumer hands every fetched batch to ``put``; a task per partition takes the due records at the head
of its queue as one batch, runs it, and only then acks them. A record that is not due yet (a retry tier's)
holds its partition: the task sleeps until the due time, while every other partition goes on. Fetching
goes on meanwhile (the records behind are due later, and are then at hand without a fetch round trip);
a queue that grows past ``high_water`` pauses its partition at the consumer, until it drains below
``low_water``, and so does the breaker (``pause_all``).

A batch is at most ``max_batch`` records, and fewer when records are slow: ``run`` returns the seconds
per record a batch spent on work that grows with its size (its handler calls; None when no record ran
one, as in a batch of redelivered duplicates), the queues keep a moving average of it and size batches
so that this work comes to about ``batch_seconds``, but never below ``min_batch`` (the handler's
concurrency, which a smaller batch could not use). An event's processing time ends when its whole batch
is delivered, so 500 calls of 10 ms in one batch would make each of them look like 5 s. The fixed cost
of a batch (a Redis round trip per step, the broker's acks) and waits for another worker's claims do not
count: they do not shrink with the batch, and counting them made a loaded machine (slower round trips)
shrink batches, which multiplied the round trips: a spiral down to ``min_batch`` and a fraction of the
throughput.

Pausing may make the consumer drop records it had already fetched for the partition (Faust does), so
``resume`` is told the next offset the queue expects, and the caller seeks there; a record delivered
twice around such a seek is recognised by its offset and queued once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from processor.headers import due_at_ms
from processor.pipeline import InRecord

log = logging.getLogger(__name__)
TP = TypeVar("TP", bound=Hashable)
FIRST_BATCH = 16
# Reasons a partition is held that leave its fetching on (reported as held all the same).
_FETCHING = frozenset({"not_due"})


@dataclass
class _Partition:
    queue: deque[InRecord] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    held: set[str] = field(default_factory=set)  # why the partition waits (see _FETCHING)
    task: asyncio.Task[None] | None = None
    next_offset: int = -1
    in_flight: asyncio.Future[None] | None = None


class PartitionQueues(Generic[TP]):
    """Runs records per partition; see the module docstring."""

    def __init__(
        self,
        run: Callable[[Sequence[InRecord]], Awaitable[float | None]],
        ack: Callable[[TP, Sequence[InRecord]], None],
        pause: Callable[[TP], None],
        resume: Callable[[TP, int], None],
        *,
        max_batch: int = 500,
        batch_seconds: float = 0.1,
        min_batch: int = 1,
        high_water: int = 5000,
        stuck_seconds: float = 30.0,
        clock: Callable[[], float] = time.time,
        on_pause_change: Callable[[str, int], None] = lambda reason, delta: None,
    ) -> None:
        self._run = run
        self._ack = ack
        self._pause = pause
        self._resume = resume
        self._max_batch = max_batch
        self._batch_seconds = batch_seconds
        self._min_batch = min(min_batch, max_batch)
        self._per_record: float | None = None  # moving average of a batch's sized work per record
        self._high_water = high_water
        self._low_water = high_water // 2
        self._stuck_seconds = stuck_seconds
        self._clock = clock
        self._on_pause_change = on_pause_change
        self._partitions: dict[TP, _Partition] = {}
        self._stopping = False
        self._retry_seconds = 1.0

    def put(self, tp: TP, records: Sequence[InRecord]) -> None:
        """Queue consumed records of ``tp``, in offset order; ``ack`` is called with them once run."""
        part = self._partitions.get(tp)
        if part is None:
            part = self._partitions[tp] = _Partition()
            part.task = asyncio.get_running_loop().create_task(self._drain(tp, part), name=f"partition-{tp}")
        queue = part.queue
        for record in records:
            if record.offset < part.next_offset:
                continue  # delivered again after a seek; the first copy is queued (or done) already
            part.next_offset = record.offset + 1
            queue.append(record)
        part.wake.set()
        if len(queue) >= self._high_water:
            self._hold(tp, part, "backpressure")

    def revoke(self, tps: Sequence[TP]) -> None:
        """Forget revoked partitions: their unacked records (and those of a batch still in flight) will be
        delivered again to the new owner."""
        for tp in tps:
            part = self._partitions.pop(tp, None)
            if part is None:
                continue
            part.queue.clear()
            for reason in list(part.held):
                self._on_pause_change(reason, -1)
            part.held.clear()
            if part.task is not None:
                # A batch in flight finishes, unacked (its claims keep others off its events until it is
                # done); only the wait ends.
                part.task.cancel()

    async def drain(self, timeout_seconds: float) -> None:
        """On shutdown: start no new batch, let the batches in flight finish and ack (so the final commit
        covers them), then forget every partition."""
        self._stopping = True
        pending = [p.in_flight for p in self._partitions.values() if p.in_flight is not None]
        if pending:
            await asyncio.wait(pending, timeout=timeout_seconds)
        self.revoke(list(self._partitions))

    def pause_all(self, reason: str) -> None:
        """Pause every partition this worker has seen, for ``reason`` (the breaker uses it)."""
        for tp, part in self._partitions.items():
            self._hold(tp, part, reason)

    def resume_all(self, reason: str) -> None:
        for tp, part in self._partitions.items():
            self._release(tp, part, reason)

    def held(self, reason: str) -> int:
        return sum(1 for p in self._partitions.values() if reason in p.held)

    async def _drain(self, tp: TP, part: _Partition) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while not self._stopping:
                if not part.queue:
                    part.wake.clear()
                    await part.wake.wait()
                    continue
                now_ms = self._clock() * 1000
                wait_ms = due_at_ms(part.queue[0].headers) - now_ms
                if wait_ms > 0:
                    self._hold(tp, part, "not_due")
                    await asyncio.sleep(wait_ms / 1000)
                    continue
                self._release(tp, part, "not_due")
                batch = self._take_due(part, now_ms)  # the same "now": the head is due in both
                part.in_flight = asyncio.ensure_future(self._run_and_ack(tp, part, batch))
                try:
                    await self._finish(tp, batch, part.in_flight)
                except Exception:
                    # A bug, not an event's failure (those are routed): keep the partition alive and run
                    # the same records again, unacked, rather than stop consuming it in silence.
                    log.exception("batch of %d records from %s failed; running it again", len(batch), tp)
                    part.queue.extendleft(reversed(batch))
                    await asyncio.sleep(self._retry_seconds)
                    self._retry_seconds = min(self._retry_seconds * 2, 30.0)
                else:
                    self._retry_seconds = 1.0
                part.in_flight = None
                if len(part.queue) < self._low_water:
                    self._release(tp, part, "backpressure")

    async def _finish(self, tp: TP, batch: list[InRecord], in_flight: asyncio.Future[None]) -> None:
        """Wait for a batch to finish, with a warning every ``stuck_seconds`` it runs: a batch that hangs
        (a handler without a timeout, an unanswered produce) stops its partition, and lag does not say why."""
        started = time.monotonic()
        # asyncio.wait, not wait_for: a revoke cancels this wait, never the batch, which must not be cut
        # between produce and ack.
        while not (await asyncio.wait({in_flight}, timeout=self._stuck_seconds))[0]:
            log.warning(
                "a batch of %d records from %s (offsets %d-%d) has been running for %.0f s",
                len(batch), tp, batch[0].offset, batch[-1].offset, time.monotonic() - started,
            )
        in_flight.result()

    async def _run_and_ack(self, tp: TP, part: _Partition, batch: list[InRecord]) -> None:
        per_record = await self._run(batch)
        if self._partitions.get(tp) is part:
            # Not after a revoke: the offsets belong to the next assignment, which reads from the committed
            # offset (its owner skips these events as done); a stale ack there could be committed past
            # records it has not run (Faust commits the first run of acked offsets it finds).
            self._ack(tp, batch)
        if per_record is not None:
            average = self._per_record
            self._per_record = per_record if average is None else 0.7 * average + 0.3 * per_record

    def batch_size(self) -> int:
        """How many records the next batch takes at most (see the module docstring)."""
        if self._per_record is None:
            # Not timed yet: start small, as if records were slow.
            return max(self._min_batch, min(self._max_batch, FIRST_BATCH))
        if not self._per_record:
            return self._max_batch
        return max(self._min_batch, min(self._max_batch, round(self._batch_seconds / self._per_record)))

    def _take_due(self, part: _Partition, now_ms: float) -> list[InRecord]:
        queue = part.queue
        size = self.batch_size()
        batch: list[InRecord] = []
        while queue and len(batch) < size and due_at_ms(queue[0].headers) <= now_ms:
            batch.append(queue.popleft())
        return batch

    def _hold(self, tp: TP, part: _Partition, reason: str) -> None:
        if reason in part.held:
            return
        if reason not in _FETCHING and not part.held - _FETCHING:
            self._pause(tp)
        part.held.add(reason)
        self._on_pause_change(reason, 1)

    def _release(self, tp: TP, part: _Partition, reason: str) -> None:
        if reason not in part.held:
            return
        part.held.discard(reason)
        self._on_pause_change(reason, -1)
        if reason not in _FETCHING and not part.held - _FETCHING:
            self._resume(tp, part.next_offset)
