"""Lag status over a sliding window of samples, after Burrow's consumer lag evaluation rules.

Per partition, over the last ``window`` samples:

- any sample with zero lag: OK (the consumer caught up at least once);
- committed offset unchanged and lag not shrinking: the consumer is not progressing. STOP when the group
  has no active member (nobody consumes), STALL when it has members (they are stuck);
- committed offset moving but lag growing at every sample: WARN (falling behind);
- otherwise OK (draining, or keeping up).

A group's status is its worst partition's; ERR when the lag could not be read. Too few samples yet: OK.
Burrow tells STOP from STALL by commit timestamps, which Kafka's OffsetFetch does not return; group
membership is the signal available here.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

Status = Literal["OK", "WARN", "STALL", "STOP", "ERR"]
SEVERITY: dict[Status, int] = {"OK": 0, "WARN": 1, "STALL": 2, "STOP": 3, "ERR": 4}


@dataclass(frozen=True, slots=True)
class Sample:
    committed: int
    lag: int
    members: int


@dataclass
class _Window:
    samples: deque[Sample] = field(default_factory=deque)


class LagEvaluator:
    """Keeps the last ``window`` samples per (group, topic, partition) and evaluates them."""

    def __init__(self, window: int = 10, min_samples: int = 3) -> None:
        self._window = window
        self._min = min_samples
        self._partitions: dict[tuple[str, str, int], _Window] = {}

    def add(self, group: str, topic: str, partition: int, sample: Sample) -> None:
        w = self._partitions.setdefault((group, topic, partition), _Window())
        w.samples.append(sample)
        while len(w.samples) > self._window:
            w.samples.popleft()

    def partition_status(self, group: str, topic: str, partition: int) -> Status:
        w = self._partitions.get((group, topic, partition))
        if w is None or len(w.samples) < self._min:
            return "OK"
        return evaluate(list(w.samples))

    def group_status(self, group: str) -> Status:
        statuses = [self.partition_status(*key) for key in self._partitions if key[0] == group]
        return worst(statuses) if statuses else "OK"

    def forget(self, group: str) -> None:
        for key in [k for k in self._partitions if k[0] == group]:
            del self._partitions[key]


def evaluate(samples: list[Sample]) -> Status:
    """Burrow's rules over one partition's window (oldest first)."""
    if any(s.lag == 0 for s in samples):
        return "OK"
    first, last = samples[0], samples[-1]
    if last.committed == first.committed and last.lag >= first.lag:
        return "STOP" if last.members == 0 else "STALL"
    if all(b.lag > a.lag for a, b in itertools.pairwise(samples)):
        return "WARN"
    return "OK"


def worst(statuses: Iterable[Status]) -> Status:
    return max(statuses, key=lambda s: SEVERITY[s], default="OK")
