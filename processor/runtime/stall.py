"""Stalled partitions: assigned to this worker, with records to read, and none arriving; found and healed.

Users of stream frameworks report partitions that silently stop being fetched, or stay paused after a
rebalance, while the lag grows and nothing in the worker says so. Every ``stall_seconds / 3`` the watch
looks at each partition the group has assigned to this handler. One that has had no records delivered or
acked for ``stall_seconds`` while nothing of ours holds it (no batch in flight, nothing queued, not paused
by the breaker, the queue's backpressure or a budget policy, not waiting for a due retry) is a candidate
(its window starts again at each assignment); the broker then says whether it has records beyond the
worker's position, one of them waiting for ``stall_seconds`` (``records_beyond``: a fetch at the committed
offset, as the lag monitor reads it). If it has, the partition is stalled:

1. reported: ``processor_stalled_partitions`` (and the ``ProcessorPartitionStalled`` alert), a warning;
2. healed by seeking it to its committed offset and resuming its fetch (``seek``), which undoes a pause
   or a fetch position nobody will move again; records before the worker's position are recognised by
   their offsets and skipped;
3. if it is still stalled ``stall_seconds`` later, by leaving the consumer group and joining it again
   (``rejoin``): a new assignment, every partition fetched afresh from its committed offset;
4. after that, reported every ``stall_seconds`` until it moves (the alert pages: the worker could not heal it).

Each action is counted in ``processor_stall_recoveries_total`` by action, and logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

log = logging.getLogger(__name__)
TP = TypeVar("TP", bound=Hashable)
Action = Literal["seek", "rejoin", "none"]


class Progress(Protocol):
    """What the partition queues know of one partition (processor.runtime.partitions)."""

    @property
    def next_offset(self) -> int: ...  # -1: nothing delivered since it was assigned

    @property
    def last_progress(self) -> float: ...  # when records were last delivered or acked

    @property
    def busy(self) -> bool: ...  # ours is the wait: in flight, queued, held (breaker, backpressure, not due)


@dataclass
class _Stall:
    since: float  # when it was found stalled
    tried: Action = "none"  # the last recovery tried
    tried_at: float = 0.0


class StallWatch(Generic[TP]):
    """Finds and heals this handler's stalled partitions; see the module docstring."""

    def __init__(
        self,
        *,
        assigned: Callable[[], Sequence[TP]],
        progress: Callable[[TP], Progress | None],
        records_beyond: Callable[[Sequence[TP]], Awaitable[Mapping[TP, int]]],
        seek: Callable[[TP, int], None],
        rejoin: Callable[[], Awaitable[None]],
        on_change: Callable[[int], None],
        on_recovery: Callable[[str], None],
        clock: Callable[[], float],
        stall_seconds: float = 30.0,
    ) -> None:
        self._assigned = assigned
        self._progress = progress
        self._records_beyond = records_beyond
        self._seek = seek
        self._rejoin = rejoin
        self._on_change = on_change
        self._on_recovery = on_recovery
        self._clock = clock
        self.stall_seconds = stall_seconds
        self._assigned_at: dict[TP, float] = {}  # when each partition was first seen in this assignment
        self._assignment_at: float | None = None  # when the group last gave this member an assignment
        self._stalls: dict[TP, _Stall] = {}
        self._quiet_until: dict[TP, float] = {}  # found with nothing to read: not asked again before then

    def reassigned(self) -> None:
        """The group gave this member a new assignment: each partition's window starts again (one revoked
        and assigned back between two checks has no records delivered yet, and is not stalled for that)."""
        self._assignment_at = self._clock()
        self._assigned_at = {}

    async def check(self) -> None:
        """One look at every assigned partition; heals what is stalled."""
        now = self._clock()
        assigned = list(self._assigned())
        start = now if self._assignment_at is None else self._assignment_at
        self._assigned_at = {tp: self._assigned_at.get(tp, start) for tp in assigned}
        candidates: list[TP] = []
        for tp in assigned:
            state = self._progress(tp)
            last = max(self._assigned_at[tp], state.last_progress if state else 0.0)
            stall = self._stalls.get(tp)
            if state is not None and (state.busy or (stall is not None and state.last_progress > stall.since)):
                self._clear(tp, "it moves again" if not state.busy else "it has work in hand")
                continue
            if now - last >= self.stall_seconds and self._quiet_until.get(tp, 0.0) <= now:
                candidates.append(tp)
        for tp in [tp for tp in self._stalls if tp not in self._assigned_at]:
            self._clear(tp, "it is no longer assigned here")
        self._quiet_until = {tp: t for tp, t in self._quiet_until.items() if tp in self._assigned_at}
        if not candidates:
            return
        beyond = await self._records_beyond(candidates)
        still = set(self._assigned())  # the read takes a while: a partition revoked meanwhile is not ours to seek
        rejoin = False
        for tp in [tp for tp in candidates if tp in still]:
            committed = beyond.get(tp)
            if committed is None:
                self._clear(tp, "it has nothing to read")
                self._quiet_until[tp] = now + self.stall_seconds  # an idle partition costs a read per window
                continue
            rejoin |= self._heal(tp, committed, now)
        if rejoin:
            await self._rejoin()
            self._on_recovery("rejoin")  # counted once done: a rejoin that raised is logged by run_forever

    def _heal(self, tp: TP, committed: int, now: float) -> bool:
        """Report and act on one stalled partition; True when the group must be left and joined again."""
        stall = self._stalls.get(tp)
        if stall is None:
            stall = self._stalls[tp] = _Stall(since=now)
            self._on_change(len(self._stalls))
            log.warning("partition %s is stalled: records to read from offset %d, none delivered for %.0f s; "
                        "seeking it to its committed offset and resuming its fetch", tp, committed,
                        self.stall_seconds)
        elif now - stall.tried_at < self.stall_seconds:
            return False  # the last action's turn to work
        elif stall.tried == "seek":
            log.warning("partition %s is still stalled after a seek: leaving the group and joining it again", tp)
            stall.tried, stall.tried_at = "rejoin", now
            return True
        else:
            log.error("partition %s is still stalled (for %.0f s) after seeking and rejoining the group",
                      tp, now - stall.since)
            stall.tried_at = now
            return False
        stall.tried, stall.tried_at = "seek", now
        self._on_recovery("seek")
        self._seek(tp, committed)
        return False

    def _clear(self, tp: TP, why: str) -> None:
        stall = self._stalls.pop(tp, None)
        if stall is not None:
            self._on_change(len(self._stalls))
            log.warning("partition %s is no longer stalled (%s) after %s", tp, why,
                        "a seek" if stall.tried == "seek" else "leaving and joining the group again")

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.stall_seconds / 3)
            try:
                await self.check()
            except Exception:  # a watch that dies silently is worse than one that logs
                log.exception("stalled-partition check failed")
