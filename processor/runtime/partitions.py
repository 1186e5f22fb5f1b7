"""Per-partition queues, run in batches across partitions: each partition in one batch in flight at most, in
offset order, acked only when done.

The consumer hands every fetched batch to ``put``; one task takes the due records at the head of every
partition with no batch in flight (up to a batch's size from each), partition after partition into one
batch while they fit in it, into the next when they do not, starts those batches, and acks each
partition's records once its batch is done. A fetch brings records of several partitions at once: when
they are few, one batch for all of them pays the fixed cost of a batch (a Redis round trip per step, a
produce and its acks, the tasks and metrics) once rather than once per partition (measured with ``processor bench``,
processor.bench); with a backlog each partition fills a batch of its own, and those run side by side,
one waiting on Redis or the broker while another works. A partition whose batch is in flight waits for it
while the others go on in the next batch. A record that is not due yet (a retry tier's) holds its
partition until the due time, while every other partition goes on. Fetching goes on meanwhile (the records
behind are due later, and are then at hand without a fetch round trip); a queue that grows past
``high_water`` pauses its partition at the consumer, until it drains below ``low_water``, and so does the
breaker (``pause_all``).

The price of sharing: a batch that waits holds every partition in it. It waits for another worker's claim
on one of its events (processor.runtime.dedup): a copy of the event in flight elsewhere, which ends with that
worker's batch, or a crashed worker's claim, which ends with its lease; the lease is as long as the group's
session timeout (processor.runtime.worker), so by the time a crashed worker's partitions are assigned again most
of its claims have lapsed.

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
from typing import Any, Generic, TypeVar

from processor.runtime.headers import due_at_ms
from processor.runtime.records import InRecord

log = logging.getLogger(__name__)
TP = TypeVar("TP", bound=Hashable)
FIRST_BATCH = 16
# Reasons a partition is held that leave its fetching on (reported as held all the same).
_FETCHING = frozenset({"not_due"})


@dataclass
class _Partition:
    queue: deque[InRecord] = field(default_factory=deque)
    held: set[str] = field(default_factory=set)  # why the partition waits (see _FETCHING)
    next_offset: int = -1
    in_flight: asyncio.Future[None] | None = None  # the batch that holds this partition's records
    last_progress: float = 0.0  # when records were last delivered or acked (processor.runtime.stall)

    @property
    def busy(self) -> bool:
        """Ours is the wait: a batch in flight, records queued, or held (breaker, backpressure, not due)."""
        return self.in_flight is not None or bool(self.queue) or bool(self.held)


# One partition's part of a batch: its key, its state, its records in offset order.
_Share = tuple[TP, _Partition, list[InRecord]]


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
        # pause_all's reasons, held on every partition until resume_all, those assigned meanwhile too; the
        # parked ones also keep what is queued from running.
        self._held_all: set[str] = set()
        self._parked: set[str] = set()
        self._stopping = False
        self._retry_seconds = 1.0
        self._wake = asyncio.Event()
        self._scheduler: asyncio.Task[None] | None = None

    def put(self, tp: TP, records: Sequence[InRecord]) -> None:
        """Queue consumed records of ``tp``, in offset order; ``ack`` is called with them once run."""
        part = self._partitions.get(tp)
        if part is None:
            part = self._partitions[tp] = _Partition()
            for reason in self._held_all:
                self._hold(tp, part, reason)
        queue = part.queue
        for record in records:
            if record.offset < part.next_offset:
                continue  # delivered again after a seek; the first copy is queued (or done) already
            part.next_offset = record.offset + 1
            queue.append(record)
        if records:
            part.last_progress = self._clock()
        if self._scheduler is None and not self._stopping:
            self._scheduler = asyncio.get_running_loop().create_task(self._schedule(), name="partition-queues")
        # Woken, not run: the consumer puts every partition of a fetch before the loop turns, and the
        # batch that follows takes them all.
        self._wake.set()
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
            # A batch in flight finishes, unacked for this partition (its claims keep others off its events
            # until it is done): nothing here cancels it, because it must not be cut between produce and ack.

    async def drain(self, timeout_seconds: float) -> None:
        """On shutdown: start no new batch, let the batches in flight finish and ack (so the final commit
        covers them), then forget every partition."""
        self._stopping = True
        if self._scheduler is not None:
            self._scheduler.cancel()
        pending = {p.in_flight for p in self._partitions.values() if p.in_flight is not None}
        if pending:
            await asyncio.wait(pending, timeout=timeout_seconds)
        self.revoke(list(self._partitions))

    def pause_all(self, reason: str, *, park: bool = False) -> None:
        """Pause every partition, and each one assigned later, for ``reason`` until ``resume_all(reason)``
        (the breaker; a budget policy's Defer). ``park``: the records already queued wait too."""
        self._held_all.add(reason)
        if park:
            self._parked.add(reason)
        for tp, part in self._partitions.items():
            self._hold(tp, part, reason)

    def resume_all(self, reason: str) -> None:
        self._held_all.discard(reason)
        self._parked.discard(reason)
        for tp, part in self._partitions.items():
            self._release(tp, part, reason)
        self._wake.set()  # parked records may run now

    def progress(self, tp: TP) -> _Partition | None:
        """One partition's state, for the stalled-partition watch (None: nothing delivered since assigned)."""
        return self._partitions.get(tp)

    def held(self, reason: str) -> int:
        return sum(1 for p in self._partitions.values() if reason in p.held)

    async def _schedule(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while not self._stopping:
                self._wake.clear()  # before looking: a put from now on wakes the wait below
                now_ms = self._clock() * 1000
                batches, next_due_ms = self._take_ready(now_ms)
                for shares in batches:
                    batch = asyncio.ensure_future(self._run_and_ack(shares))
                    for _, part, _ in shares:
                        part.in_flight = batch
                if batches:
                    continue
                if next_due_ms is None:
                    await self._wake.wait()
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.0, next_due_ms - now_ms) / 1000)

    def _take_ready(self, now_ms: float) -> tuple[list[list[_Share[TP]]], float | None]:
        """The next batches: the due records of every partition with none in flight (the same "now" decides
        both), up to a batch of each, partition after partition into a batch while they fit, into the next
        when they do not; and, when there are none, when the first held partition is due (None: nothing is
        waiting)."""
        ready: list[tuple[TP, _Partition]] = []
        next_due_ms: float | None = None
        for tp, part in self._partitions.items():
            if part.in_flight is not None or not part.queue or part.held & self._parked:
                continue
            due_ms = due_at_ms(part.queue[0].headers)
            if due_ms > now_ms:
                self._hold(tp, part, "not_due")
                next_due_ms = due_ms if next_due_ms is None else min(next_due_ms, due_ms)
                continue
            self._release(tp, part, "not_due")
            ready.append((tp, part))
        if not ready:
            return [], next_due_ms
        size = self.batch_size()
        batches: list[list[_Share[TP]]] = [[]]
        room = size
        for tp, part in ready:
            records = _take_due(part.queue, now_ms, size)  # at least the head: it is due
            if len(records) > room:
                # A batch of its own rather than the room left: a partition that came last into full
                # batches got only their remainders, batch after batch, and fell behind the others
                # (one partition 400 ms behind for seconds at 12 000 events/s, the rest at 80 ms).
                batches.append([])
                room = size
            batches[-1].append((tp, part, records))
            room -= len(records)
        return batches, next_due_ms

    async def _run_and_ack(self, shares: list[_Share[TP]]) -> None:
        records = [record for _, _, batch in shares for record in batch]
        try:
            per_record = await self._run_watched(records, shares)
        except Exception:
            # A bug, not an event's failure (those are routed): keep the partitions alive and run the same
            # records again, unacked, rather than stop consuming them in silence. They stay in flight
            # meanwhile, so nothing of theirs runs before the back-off ends.
            log.exception("batch of %d records from %s failed; running it again", len(records), _where(shares))
            for tp, part, batch in shares:
                if self._partitions.get(tp) is part:
                    part.queue.extendleft(reversed(batch))
            await asyncio.sleep(self._retry_seconds)
            self._retry_seconds = min(self._retry_seconds * 2, 30.0)
        else:
            self._retry_seconds = 1.0
            for tp, part, batch in shares:
                if self._partitions.get(tp) is part:
                    # Not after a revoke: the offsets belong to the next assignment, which reads from the
                    # committed offset (its owner skips these events as done); a stale ack there could be
                    # committed past records it has not run (Faust commits the first run of acked offsets
                    # it finds).
                    self._ack(tp, batch)
                    part.last_progress = self._clock()
            if per_record is not None:
                average = self._per_record
                self._per_record = per_record if average is None else 0.7 * average + 0.3 * per_record
        finally:
            for tp, part, _ in shares:
                part.in_flight = None
                if self._partitions.get(tp) is part and len(part.queue) < self._low_water:
                    self._release(tp, part, "backpressure")
            self._wake.set()

    async def _run_watched(self, records: list[InRecord], shares: list[_Share[TP]]) -> float | None:
        """``run``, with a warning every ``stuck_seconds`` it runs: a batch that hangs (a handler without a
        timeout, an unanswered produce) stops its partitions, and lag does not say why."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        timer: asyncio.TimerHandle | None = None

        def warn() -> None:
            nonlocal timer
            log.warning("a batch of %d records from %s has been running for %.0f s", len(records), _where(shares),
                        time.monotonic() - started)
            timer = loop.call_later(self._stuck_seconds, warn)

        timer = loop.call_later(self._stuck_seconds, warn)
        try:
            return await self._run(records)
        finally:
            timer.cancel()  # the last one armed

    def batch_size(self) -> int:
        """How many records the next batch takes at most, over all its partitions (see the module docstring)."""
        if self._per_record is None:
            # Not timed yet: start small, as if records were slow.
            return max(self._min_batch, min(self._max_batch, FIRST_BATCH))
        if not self._per_record:
            return self._max_batch
        return max(self._min_batch, min(self._max_batch, round(self._batch_seconds / self._per_record)))

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


def _take_due(queue: deque[InRecord], now_ms: float, limit: int) -> list[InRecord]:
    """Up to ``limit`` due records, taken from the head of ``queue``."""
    taken: list[InRecord] = []
    while queue and len(taken) < limit and due_at_ms(queue[0].headers) <= now_ms:
        taken.append(queue.popleft())
    return taken


def _where(shares: Sequence[_Share[Any]]) -> str:
    return ", ".join(f"{tp} (offsets {batch[0].offset}-{batch[-1].offset})" for tp, _, batch in shares)
