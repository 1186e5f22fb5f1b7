"""Chaos experiments: the model. An experiment is a steady-state hypothesis, a fault, a workload and the
checks that give the verdict; ``Observed`` is everything a run saw, which the checks read.

The hypothesis every experiment shares (``processor.chaos.run.hypothesis``): every input accounted for
(processed or dead-lettered) by every handler, no side effect twice, outputs repeated only in the
crash windows processor.runtime.dedup names, lag back to 0, the workers' counts agreeing with the
verifier, and the right pages (or none). An experiment adds the checks that show its fault really
happened (a breaker opened, Redis was seen down, a third replica got partitions).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from processor.chaos.faults import Fault
from processor.chaos.record import Mark, Series
from processor.chaos.verify import EffectsAccount, HandlerAccount, Unit
from processor.chaos.workload import Production


@dataclass(frozen=True)
class CheckResult:
    """One line of a verdict."""

    name: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class Observed:
    """What one run saw: the inputs, what each handler made of them, the ledgers, the scrapes, the faults."""

    run_id: str
    units: Mapping[str, Unit]
    accounts: Sequence[HandlerAccount]
    effects: Sequence[EffectsAccount]
    series: Sequence[Series]
    timeline: Sequence[Mark]
    production: Production
    load_started_at: float  # the workload's first record
    started_at: float  # the first scrape
    ended_at: float  # the last scrape
    expected_duplicates: int  # copies of an event id beyond its first, as produced
    lag_zero_seconds: float | None  # after every input was accounted for, until every group's lag was 0

    def account(self, handler: str) -> HandlerAccount:
        return next(a for a in self.accounts if a.handler == handler)

    def workers(self) -> list[Series]:
        return [s for s in self.series if s.role == "worker"]


Check = Callable[[Observed], CheckResult]


@dataclass(frozen=True)
class Experiment:
    """One chaos experiment; ``--events`` and ``--duration`` override ``events`` and ``duration``."""

    name: str
    hypothesis: str  # what should hold, in words
    fault: Fault
    # Every downstream call takes 5 ms (PROCESSOR_SIM_LATENCY_MS), as a real one takes some: so a crash
    # finds handlers mid-call, and the crash windows of processor.runtime.dedup are really exercised.
    worker_env: Mapping[str, str] = field(default_factory=lambda: {"PROCESSOR_SIM_LATENCY_MS": "5"})
    events: int = 1500
    duration: float = 15.0
    replicas: int = 2
    duplicates: int = 0
    poison: bool = False
    oversized: int = 0  # records above max_event_bytes
    pages: frozenset[str] = frozenset()  # page alerts that must fire, then clear
    may_page: frozenset[str] = frozenset()  # page alerts tolerated (they follow from the expected ones)
    checks: tuple[Check, ...] = ()
    persistent_redis: bool = False
    drain_seconds: float = 60.0  # after the workload: how long every input may take to be accounted for
    time_limit: float = 300.0  # the whole experiment, start-up to verdict
    quick: bool = False  # in the bounded subset `make test` runs
    topology: str | None = None  # the workers' topology module; None: the run's (--topology)
    notes: tuple[str, ...] = field(default=())
