"""Chaos experiments: what happened, as it happened. The timeline of faults, and every process's /metrics
scraped every second (the way Prometheus would, at a 1 s interval).

Each process keeps all its scrapes; its last one is what it reported before it stopped. A killed
replica's counters since its last scrape die with it: the verifier compares counts within a tolerance
for exactly that (see ``processor.chaos.verify``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from processor.chaos.fleet import Fleet, Member
from processor.observability.scrape import Scrape

SCRAPE_INTERVAL_SECONDS = 1.0


@dataclass(frozen=True)
class Mark:
    """One entry of the fault timeline: ``at`` is wall-clock time (seconds since the epoch)."""

    at: float
    kind: str  # "inject", "heal" or "note"
    text: str


@dataclass
class Timeline:
    """Faults injected and healed, and notes, in order; thread-safe."""

    marks: list[Mark] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, kind: str, text: str) -> Mark:
        mark = Mark(time.time(), kind, text)
        with self._lock:
            self.marks.append(mark)
        return mark

    def inject(self, text: str) -> Mark:
        return self.add("inject", text)

    def heal(self, text: str) -> Mark:
        return self.add("heal", text)

    def note(self, text: str) -> Mark:
        return self.add("note", text)

    def snapshot(self) -> list[Mark]:
        with self._lock:
            return list(self.marks)

    def fault_window(self) -> tuple[float, float] | None:
        """From the first injection to the last heal (or the last injection, when nothing heals)."""
        marks = self.snapshot()
        injects = [m.at for m in marks if m.kind == "inject"]
        if not injects:
            return None
        heals = [m.at for m in marks if m.kind == "heal"]
        return min(injects), max([*heals, *injects])


@dataclass(frozen=True)
class Sample:
    """One scrape of one process."""

    at: float
    scrape: Scrape


@dataclass
class Series:
    """Every scrape of one process, and when it started and ended."""

    name: str
    role: str
    instance: str
    started_at: float
    samples: list[Sample] = field(default_factory=list)
    ended_at: float | None = None
    killed: bool = False

    @property
    def last(self) -> Scrape:
        return self.samples[-1].scrape if self.samples else Scrape()


class Recorder:
    """Scrapes every live process of a fleet every second, in a thread, until ``stop``."""

    def __init__(self, fleet: Fleet, interval_seconds: float = SCRAPE_INTERVAL_SECONDS) -> None:
        self._fleet = fleet
        self._interval = interval_seconds
        self._series: dict[str, Series] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-recorder", daemon=True)
        self.started_at = 0.0

    def start(self) -> Recorder:
        self.started_at = time.time()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop scraping, after one last scrape of every process still running; idempotent."""
        if not self._thread.is_alive():
            return
        self._stop.set()
        self._thread.join(10)
        self.scrape_once()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.scrape_once()
            next_at += self._interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def scrape_once(self) -> None:
        for member in self._fleet.snapshot():
            series = self._series_of(member)
            if member.alive():
                try:
                    sample = Sample(time.time(), member.metrics())
                except OSError:
                    continue  # starting, or too busy to answer this second: a gap, as Prometheus would see
                with self._lock:
                    series.samples.append(sample)
            with self._lock:
                series.ended_at = member.ended_at
                series.killed = member.killed

    def _series_of(self, member: Member) -> Series:
        with self._lock:
            series = self._series.get(member.name)
            if series is None:
                series = self._series[member.name] = Series(member.name, member.role, member.instance,
                                                            member.started_at)
            return series

    def series(self) -> list[Series]:
        with self._lock:
            return list(self._series.values())

    def workers(self) -> Iterator[Series]:
        return (s for s in self.series() if s.role == "worker")
