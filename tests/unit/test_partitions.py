from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from processor.runtime import headers as h
from processor.runtime.partitions import PartitionQueues
from processor.runtime.records import InRecord


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Recorder:
    """The consumer side: records every run batch, ack, pause and resume, and can hold runs back."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock
        self.runs: list[list[tuple[int, int]]] = []  # [(partition, offset), ...] per batch
        self.run_times: list[float] = []
        self.acks: list[tuple[int, int]] = []  # (partition, offset), in ack order
        self.pauses: list[int] = []
        self.resumes: list[tuple[int, int]] = []
        self.pause_changes: list[tuple[str, int]] = []
        self.in_flight: dict[int, int] = {}
        self.max_in_flight: dict[int, int] = {}
        self.gate = asyncio.Event()
        self.gate.set()
        self.runs_at_resume: list[int] = []
        self.work: Callable[[int], float | None] = lambda n: 0.0  # handler seconds per record a batch reports

    async def run(self, records: Sequence[InRecord]) -> float | None:
        partitions = {r.partition for r in records}
        for p in partitions:
            self.in_flight[p] = self.in_flight.get(p, 0) + 1
            self.max_in_flight[p] = max(self.max_in_flight.get(p, 0), self.in_flight[p])
        self.runs.append([(r.partition, r.offset) for r in records])
        if self.clock is not None:
            self.run_times.append(self.clock())
        try:
            await self.gate.wait()
        finally:
            for p in partitions:
                self.in_flight[p] -= 1
        return self.work(len(records))

    def ack(self, tp: int, records: Sequence[InRecord]) -> None:
        assert all(r.partition == tp for r in records)
        self.acks += [(tp, r.offset) for r in records]

    def pause(self, tp: int) -> None:
        self.pauses.append(tp)

    def resume(self, tp: int, offset: int) -> None:
        self.resumes.append((tp, offset))
        self.runs_at_resume.append(len(self.runs))

    def on_pause_change(self, reason: str, delta: int) -> None:
        self.pause_changes.append((reason, delta))

    def queues(self, clock: Callable[[], float] | None = None, **kwargs: float) -> PartitionQueues[int]:
        return PartitionQueues(
            self.run, self.ack, self.pause, self.resume, clock=clock or (lambda: 1_000.0),
            on_pause_change=self.on_pause_change, **kwargs,  # type: ignore[arg-type]
        )

    def offsets(self, partition: int) -> list[int]:
        return [o for batch in self.runs for p, o in batch if p == partition]


def rec(partition: int, offset: int, due_ms: int = 0) -> InRecord:
    return InRecord("t", partition, offset, 0, None, b"{}", {h.DUE_AT_MS: str(due_ms).encode()} if due_ms else {})


async def until(cond: Callable[[], bool], within_seconds: float = 5.0) -> None:
    """Wait (really) until ``cond`` holds; fail after ``within_seconds``."""
    for _ in range(int(within_seconds / 0.005)):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached in time")


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def sizes(r: Recorder) -> list[int]:
    return [len(batch) for batch in r.runs]


async def test_slow_records_make_batches_whose_handler_calls_take_about_batch_seconds() -> None:
    r = Recorder()
    r.work = lambda n: 0.01  # 10 ms per record
    q = r.queues(max_batch=500, batch_seconds=0.1)
    q.put(0, [rec(0, offset) for offset in range(60)])
    await until(lambda: len(r.acks) == 60)
    assert sizes(r) == [16, 10, 10, 10, 10, 4]  # the first batch is small until one has been timed
    await q.drain(1.0)


async def test_batches_never_go_below_min_batch() -> None:
    r = Recorder()
    r.work = lambda n: 0.6 / n  # one round of concurrent 600 ms calls, whatever the size
    q = r.queues(max_batch=500, batch_seconds=0.1, min_batch=20)
    q.put(0, [rec(0, offset) for offset in range(100)])
    await until(lambda: len(r.acks) == 100)
    assert sizes(r) == [20] * 5
    await q.drain(1.0)


async def test_fast_handlers_get_full_batches_however_slow_the_rest_of_a_batch_is() -> None:
    clock = FakeClock()
    r = Recorder(clock)
    real_run = r.run

    async def slow_round_trips(records: Sequence[InRecord]) -> float | None:
        clock.now += 0.5  # round trips on a loaded machine: they do not shrink with the batch
        return await real_run(records)

    r.work = lambda n: 0.0001
    q = PartitionQueues(slow_round_trips, r.ack, r.pause, r.resume, clock=clock, max_batch=100, batch_seconds=0.1)
    q.put(0, [rec(0, offset) for offset in range(500)])
    await until(lambda: len(r.acks) == 500)
    assert sizes(r) == [16, 100, 100, 100, 100, 84]
    await q.drain(1.0)


async def test_a_batch_that_waited_grows_back_to_full_batches() -> None:
    r = Recorder()
    waited = [30.0 / 16]  # the first batch's handlers waited 30 s (a slow call), then calls are fast again
    r.work = lambda n: waited.pop() if waited else 0.0001
    q = r.queues(max_batch=100, batch_seconds=0.1, min_batch=4)
    q.put(0, [rec(0, offset) for offset in range(2000)])
    await until(lambda: len(r.acks) == 2000)
    grown = sizes(r)[1 : sizes(r).index(100) + 1]  # up to the first full batch, which does come
    assert grown[0] == 4
    assert grown == sorted(grown)
    await q.drain(1.0)


async def test_batches_that_ran_no_handler_leave_the_batch_size_alone() -> None:
    r = Recorder()
    fresh = iter([True, False, False, False, False, False, True])  # duplicates between two fresh batches
    r.work = lambda n: 0.01 if next(fresh, True) else None
    q = r.queues(max_batch=500, batch_seconds=0.1)
    q.put(0, [rec(0, offset) for offset in range(96)])
    await until(lambda: len(r.acks) == 96)
    assert sizes(r)[:7] == [16, 10, 10, 10, 10, 10, 10]
    await q.drain(1.0)


async def test_records_of_a_partition_run_in_offset_order_in_batches() -> None:
    r = Recorder()
    q = r.queues(max_batch=2)
    for offset in range(5):
        q.put(0, [rec(0, offset)])
    await until(lambda: len(r.acks) == 5)
    assert r.runs == [[(0, 0), (0, 1)], [(0, 2), (0, 3)], [(0, 4)]]
    assert r.acks == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4)]
    await q.drain(1.0)


async def test_one_batch_in_flight_per_partition_and_acks_after_run() -> None:
    r = Recorder()
    r.gate.clear()
    q = r.queues()
    q.put(0, [rec(0, 0)])
    await until(lambda: len(r.runs) == 1)
    q.put(0, [rec(0, 1)])
    q.put(0, [rec(0, 2)])
    await settle()
    assert r.runs == [[(0, 0)]]  # the next batch waits for the one in flight
    assert r.acks == []  # nothing acked while its batch runs
    r.gate.set()
    await until(lambda: len(r.acks) == 3)
    assert r.runs == [[(0, 0)], [(0, 1), (0, 2)]]
    assert r.acks == [(0, 0), (0, 1), (0, 2)]
    assert r.max_in_flight[0] == 1
    await q.drain(1.0)


async def test_partitions_queued_together_run_as_one_batch_and_each_is_acked_in_order() -> None:
    r = Recorder()
    q = r.queues()
    q.put(0, [rec(0, 0), rec(0, 1)])  # as the consumer puts a fetch: every partition before the loop turns
    q.put(1, [rec(1, 5)])
    q.put(2, [rec(2, 9), rec(2, 10)])
    await until(lambda: len(r.acks) == 5)
    assert len(r.runs) == 1
    assert sorted(r.runs[0]) == [(0, 0), (0, 1), (1, 5), (2, 9), (2, 10)]
    for partition in (0, 1, 2):  # each partition's records in offset order, in the batch and in its acks
        assert [o for p, o in r.runs[0] if p == partition] == sorted(o for p, o in r.runs[0] if p == partition)
    assert [o for p, o in r.acks if p == 2] == [9, 10]
    await q.drain(1.0)


async def test_a_partition_in_flight_does_not_hold_another_that_comes_meanwhile() -> None:
    r = Recorder()
    r.gate.clear()
    q = r.queues()
    q.put(0, [rec(0, 0)])
    await until(lambda: len(r.runs) == 1)
    q.put(1, [rec(1, 0)])
    q.put(0, [rec(0, 1)])  # waits for partition 0's batch in flight
    await until(lambda: len(r.runs) == 2)  # both batches in flight at once
    assert r.runs == [[(0, 0)], [(1, 0)]]
    assert r.in_flight == {0: 1, 1: 1}
    r.gate.set()
    await until(lambda: len(r.acks) == 3)
    assert r.runs[2] == [(0, 1)]
    assert r.max_in_flight == {0: 1, 1: 1}
    await q.drain(1.0)


async def held_full_batches(max_batch: int) -> tuple[Recorder, PartitionQueues[int]]:
    """Queues whose next batches are ``max_batch`` records (one timed batch of free records has run: r.work),
    with the runs held at the gate."""
    r = Recorder()
    q = r.queues(max_batch=max_batch)
    q.put(9, [rec(9, 0)])
    await until(lambda: len(r.acks) == 1)
    r.gate.clear()
    return r, q


async def test_a_full_batch_leaves_the_other_partitions_a_batch_of_their_own_at_once() -> None:
    r, q = await held_full_batches(max_batch=6)
    q.put(0, [rec(0, o) for o in range(10)])
    q.put(1, [rec(1, o) for o in range(10)])
    q.put(2, [rec(2, 0)])
    await until(lambda: len(r.runs) >= 3)
    await settle()
    started = r.runs[1:]  # side by side, all in flight at once: each partition is in one of them
    assert sum(len(batch) for batch in started) == 13
    assert max(len(batch) for batch in started) == 6
    partitions = [p for batch in started for p in {p for p, _ in batch}]
    assert sorted(partitions) == [0, 1, 2]
    r.gate.set()
    await until(lambda: len(r.acks) == 22)
    for partition in (0, 1):
        assert r.offsets(partition) == list(range(10))
    await q.drain(1.0)


async def test_a_partition_that_does_not_fit_the_room_left_gets_a_batch_of_its_own_not_the_remainder() -> None:
    r, q = await held_full_batches(max_batch=6)
    q.put(0, [rec(0, o) for o in range(5)])
    q.put(1, [rec(1, o) for o in range(5)])
    await until(lambda: len(r.runs) >= 3)
    await settle()
    # Partition 1 used to get the one record of room partition 0 left, then wait for that batch: a
    # partition that came last into full batches fell behind the others, batch after batch.
    assert sorted(r.runs[1:]) == [[(0, o) for o in range(5)], [(1, o) for o in range(5)]]
    r.gate.set()
    await until(lambda: len(r.acks) == 11)
    await q.drain(1.0)


async def test_with_a_backlog_each_partition_fills_batches_of_its_own_side_by_side() -> None:
    r = Recorder()
    r.gate.clear()
    q = r.queues(max_batch=1)
    for p in (0, 1):
        q.put(p, [rec(p, o) for o in range(3)])
    await until(lambda: len(r.runs) == 2)
    await settle()
    assert sorted(r.runs) == [[(0, 0)], [(1, 0)]]  # neither waits for the other to drain
    assert r.in_flight == {0: 1, 1: 1}
    r.gate.set()
    await until(lambda: len(r.acks) == 6)
    assert sizes(r) == [1] * 6
    assert r.max_in_flight == {0: 1, 1: 1}
    await q.drain(1.0)


async def test_a_batch_that_raises_is_run_again_unacked_after_a_back_off() -> None:
    r = Recorder()
    failures = [RuntimeError("a bug")]
    inner = r.run

    async def run(records: Sequence[InRecord]) -> float | None:
        result = await inner(records)
        if failures:
            raise failures.pop()
        return result

    q = PartitionQueues(run, r.ack, r.pause, r.resume)
    q._retry_seconds = 0.01  # the first back-off, shortened for the test
    q.put(0, [rec(0, 0)])
    q.put(1, [rec(1, 0)])
    await until(lambda: len(r.acks) == 2)
    assert len(r.runs) == 2
    assert sorted(r.runs[0]) == sorted(r.runs[1]) == [(0, 0), (1, 0)]
    assert sorted(r.acks) == [(0, 0), (1, 0)]  # acked once, after the run that succeeded
    await q.drain(1.0)


async def test_not_due_record_holds_its_partition_until_due_while_others_run() -> None:
    clock = FakeClock(1_000.0)
    r = Recorder(clock)
    q = r.queues(clock=clock)
    due_ms = 1_000_000 + 50  # 50 ms ahead of the fake clock
    q.put(0, [rec(0, 7, due_ms=due_ms)])
    await until(lambda: q.held("not_due") == 1)
    q.put(1, [rec(1, 3)])  # another partition goes on meanwhile
    await until(lambda: r.acks == [(1, 3)])
    await asyncio.sleep(0.2)  # several times the delay in real time, but the clock has not moved
    assert r.offsets(0) == []
    # Held, not paused: the consumer keeps fetching what is behind it (due later), so no seek is needed.
    assert r.pauses == []
    clock.now = 1_000.05
    await until(lambda: (0, 7) in r.acks)
    assert r.offsets(0) == [7]
    assert r.run_times[-1] * 1000 >= due_ms
    assert r.resumes == []
    assert r.pause_changes == [("not_due", 1), ("not_due", -1)]
    await q.drain(1.0)


async def test_a_not_due_partition_that_reaches_high_water_is_paused_and_resumed_once_drained() -> None:
    clock = FakeClock(1_000.0)
    r = Recorder(clock)
    q = r.queues(clock=clock, high_water=4)  # low water: 2
    q.put(0, [rec(0, offset, due_ms=1_000_000 + 30) for offset in range(4)])
    await until(lambda: q.held("not_due") == 1)
    assert r.pauses == [0]
    assert q.held("backpressure") == 1
    clock.now = 1_000.03
    await until(lambda: len(r.acks) == 4)
    assert r.resumes == [(0, 4)]
    assert q.held("not_due") == q.held("backpressure") == 0
    await q.drain(1.0)


async def test_a_due_record_behind_a_not_due_one_waits_for_it() -> None:
    clock = FakeClock(1_000.0)
    r = Recorder(clock)
    q = r.queues(clock=clock)
    q.put(0, [rec(0, 0, due_ms=1_000_000 + 30)])
    q.put(0, [rec(0, 1)])
    await until(lambda: q.held("not_due") == 1)
    await asyncio.sleep(0.1)
    assert r.runs == []
    clock.now = 1_000.03
    await until(lambda: len(r.acks) == 2)
    assert r.offsets(0) == [0, 1]
    assert r.acks == [(0, 0), (0, 1)]
    await q.drain(1.0)


async def test_redelivered_lower_offset_is_dropped() -> None:
    r = Recorder()
    r.gate.clear()
    q = r.queues()
    q.put(0, [rec(0, 5), rec(0, 6)])
    q.put(0, [rec(0, 5), rec(0, 6), rec(0, 7)])  # delivered again after a seek
    r.gate.set()
    await until(lambda: (0, 7) in r.acks)
    await settle()
    assert r.offsets(0) == [5, 6, 7]
    assert r.acks == [(0, 5), (0, 6), (0, 7)]
    await q.drain(1.0)


async def test_revoke_forgets_the_partition_and_lets_the_batch_in_flight_finish_unacked() -> None:
    r = Recorder()
    r.gate.clear()
    q = r.queues()
    q.put(0, [rec(0, 0)])
    await until(lambda: len(r.runs) == 1)
    q.put(0, [rec(0, 1)])
    q.put(1, [rec(1, 0)])
    q.revoke([0])
    r.gate.set()
    await until(lambda: (1, 0) in r.acks and r.in_flight[0] == 0)
    await settle()
    assert r.offsets(0) == [0]  # offset 1 was forgotten, for the partition's new owner
    # The batch ran to its end (never cut between produce and ack), but its offsets belong to the new
    # assignment now, which reads from the committed offset (if it is this worker again, its new queue).
    assert (0, 0) not in r.acks
    assert (0, 1) not in r.acks
    q.put(0, [rec(0, 0), rec(0, 1)])  # assigned back: the old next_offset is forgotten too
    await until(lambda: (0, 1) in r.acks)
    assert r.offsets(0) == [0, 0, 1]
    await q.drain(1.0)


async def test_revoke_reports_its_holds_as_released() -> None:
    clock = FakeClock(1_000.0)
    r = Recorder(clock)
    q = r.queues(clock=clock)
    q.put(0, [rec(0, 0, due_ms=2_000_000)])
    await until(lambda: q.held("not_due") == 1)
    assert q.held("not_due") == 1
    q.revoke([0])
    assert q.held("not_due") == 0
    assert r.pause_changes == [("not_due", 1), ("not_due", -1)]
    await q.drain(1.0)


async def test_high_water_pauses_and_draining_below_low_water_resumes() -> None:
    r = Recorder()
    r.gate.clear()
    q = r.queues(max_batch=1, high_water=4)  # low water: 2
    q.put(0, [rec(0, 0)])
    await until(lambda: len(r.runs) == 1)
    for offset in range(1, 4):
        q.put(0, [rec(0, offset)])
    assert r.pauses == []  # 3 queued: below high water
    q.put(0, [rec(0, 4)])
    assert r.pauses == [0]
    assert q.held("backpressure") == 1
    r.gate.set()
    await until(lambda: len(r.acks) == 5)
    assert r.resumes == [(0, 5)]
    # resumed after batches 0, 1, 2, 3 ran: the queue held 1 record then, below low water (2)
    assert r.runs_at_resume == [4]
    assert q.held("backpressure") == 0
    assert r.pause_changes == [("backpressure", 1), ("backpressure", -1)]
    await q.drain(1.0)


async def test_pause_all_and_resume_all() -> None:
    r = Recorder()
    q = r.queues()
    q.put(0, [rec(0, 0)])
    q.put(1, [rec(1, 0)])
    await until(lambda: len(r.acks) == 2)
    q.pause_all("breaker")
    assert sorted(r.pauses) == [0, 1]
    assert q.held("breaker") == 2
    q.resume_all("breaker")
    assert sorted(r.resumes) == [(0, 1), (1, 1)]
    assert q.held("breaker") == 0
    await q.drain(1.0)


async def test_pause_all_holds_a_partition_assigned_after_it_too() -> None:
    r = Recorder()
    q = r.queues()
    q.pause_all("breaker")  # nothing seen yet: a rebalance assigns partition 2 meanwhile
    q.put(2, [rec(2, 0)])
    assert r.pauses == [2]
    assert q.held("breaker") == 1
    q.resume_all("breaker")
    assert r.resumes == [(2, 1)]
    await until(lambda: r.acks == [(2, 0)])
    await q.drain(1.0)


async def test_a_parked_handler_runs_nothing_it_has_queued_until_resumed() -> None:
    r = Recorder()
    r.gate.clear()
    q = r.queues(max_batch=1)
    q.put(0, [rec(0, 0), rec(0, 1), rec(0, 2)])
    await until(lambda: len(r.runs) == 1)
    q.pause_all("budget", park=True)
    r.gate.set()
    await until(lambda: r.acks == [(0, 0)])
    await settle()
    assert r.offsets(0) == [0]  # offsets 1 and 2 wait, queued
    q.resume_all("budget")
    await until(lambda: len(r.acks) == 3)
    assert r.offsets(0) == [0, 1, 2]
    await q.drain(1.0)


class Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def test_a_batch_that_runs_long_is_reported_until_it_ends() -> None:
    r = Recorder()
    r.gate.clear()
    q = r.queues(stuck_seconds=0.05)
    warnings = Warnings()
    logger = logging.getLogger("processor.runtime.partitions")
    logger.addHandler(warnings)
    try:
        q.put(3, [rec(3, 7), rec(3, 8)])
        await until(lambda: len(warnings.messages) >= 2)
        r.gate.set()
        await until(lambda: r.acks == [(3, 7), (3, 8)])
    finally:
        logger.removeHandler(warnings)
    assert "a batch of 2 records from 3 (offsets 7-8) has been running for" in warnings.messages[0]
    await q.drain(1.0)


async def test_drain_waits_for_the_batch_in_flight_to_ack() -> None:
    r = Recorder()
    r.gate.clear()
    q = r.queues()
    q.put(0, [rec(0, 0)])
    await until(lambda: len(r.runs) == 1)
    q.put(0, [rec(0, 1)])
    draining = asyncio.create_task(q.drain(5.0))
    await settle()
    assert not draining.done()
    assert r.acks == []
    r.gate.set()
    await asyncio.wait_for(draining, 5.0)
    assert r.acks == [(0, 0)]  # acked before drain returned
    await settle()
    assert r.offsets(0) == [0]  # no new batch started after drain began
    assert (0, 1) not in r.acks
