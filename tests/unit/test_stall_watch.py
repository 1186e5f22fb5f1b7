"""The stalled-partition watch's decisions, on a fake clock: who is a candidate, and seek, then rejoin."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from processor.runtime.stall import StallWatch


@dataclass
class _State:
    next_offset: int = 10
    last_progress: float = 0.0
    busy: bool = False


class _Bed:
    def __init__(self) -> None:
        self.now = 0.0
        self.states: dict[str, _State] = {"p0": _State(), "p1": _State()}
        self.beyond: dict[str, int] = {"p0": 7}  # p0 has records to read, committed at 7; p1 nothing
        self.asked: list[list[str]] = []
        self.actions: list[str] = []
        self.stalled = 0
        self.watch = StallWatch(
            assigned=lambda: list(self.states), progress=self.states.get, records_beyond=self._beyond,
            seek=lambda tp, offset: self.actions.append(f"seek {tp} {offset}"), rejoin=self._rejoin,
            on_change=self._set, on_recovery=lambda action: None, clock=lambda: self.now, stall_seconds=30,
        )

    async def _beyond(self, tps: Sequence[str]) -> Mapping[str, int]:
        self.asked.append(list(tps))
        return {tp: self.beyond[tp] for tp in tps if tp in self.beyond}

    async def _rejoin(self) -> None:
        self.actions.append("rejoin")

    def _set(self, n: int) -> None:
        self.stalled = n

    def at(self, now: float) -> None:
        self.now = now
        asyncio.run(self.watch.check())


def test_seek_first_then_rejoin_then_only_report() -> None:
    bed = _Bed()
    bed.at(0)  # first seen: assigned now
    bed.at(10)
    assert bed.asked == []  # nobody silent for 30 s yet
    bed.at(31)
    assert bed.actions == ["seek p0 7"]
    assert bed.stalled == 1
    bed.at(45)
    assert bed.actions == ["seek p0 7"]  # the seek's turn to work
    bed.at(62)
    assert bed.actions == ["seek p0 7", "rejoin"]
    bed.at(93)
    assert bed.actions == ["seek p0 7", "rejoin"]  # reported, nothing more to try
    assert bed.stalled == 1


def test_progress_clears_a_stall_and_busy_partitions_are_never_asked() -> None:
    bed = _Bed()
    bed.states["p1"].busy = True  # in flight, queued or held (breaker, backpressure, a retry not due)
    bed.at(0)
    bed.at(31)
    assert bed.asked == [["p0"]]
    assert bed.stalled == 1
    bed.states["p0"].last_progress = 40  # records delivered after the seek
    bed.at(41)
    assert bed.stalled == 0


def test_a_partition_with_nothing_to_read_is_asked_once_a_window() -> None:
    bed = _Bed()
    bed.beyond = {}
    bed.at(0)
    bed.at(31)
    bed.at(41)
    bed.at(62)
    assert bed.asked == [["p0", "p1"], ["p0", "p1"]]  # at 31, then not before 61
    assert bed.actions == []
    assert bed.stalled == 0


def test_a_new_assignment_starts_every_window_again() -> None:
    bed = _Bed()
    bed.at(0)
    bed.now = 25
    bed.watch.reassigned()  # revoked and assigned back between two checks: nothing delivered since
    bed.states = {"p0": _State(last_progress=0.0)}
    bed.at(31)
    bed.at(50)
    assert bed.asked == []  # not silent for 30 s since the assignment at 25
    bed.at(56)
    assert bed.asked == [["p0"]]


def test_a_partition_revoked_while_the_broker_is_read_is_not_sought() -> None:
    bed = _Bed()

    async def revoke_meanwhile(tps: Sequence[str]) -> Mapping[str, int]:
        bed.states.pop("p0")
        return {"p0": 7}

    bed.watch._records_beyond = revoke_meanwhile
    bed.at(0)
    bed.at(31)
    assert bed.actions == []
    assert bed.stalled == 0
