"""Circuit breakers, one per named dependency: closed -> open -> half-open -> closed.

Pure logic with an injected clock; the pipeline asks ``allow()`` before a call and reports the outcome,
and waits in ``wait_until_allowed()`` while the breaker is open (its partitions paused meanwhile).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

from processor.errors import ConfigError


@dataclass(frozen=True)
class BreakerConfig:
    """A circuit breaker around one dependency: closed -> open -> half-open -> closed.

    It opens when, among the last ``window_calls`` calls made within ``window_seconds``, at least
    ``min_calls`` were made and the share that failed reached ``failure_rate``; it waits ``open_seconds``,
    then lets ``half_open_probes`` calls through, and closes when they all succeed. The window counts
    calls, not seconds, so that a busy handler trips after a few dozen failures, not after thousands.
    """

    failure_rate: float = 0.5
    window_calls: int = 20
    window_seconds: float = 30.0
    min_calls: int = 10
    open_seconds: float = 5.0
    half_open_probes: int = 3

    def __post_init__(self) -> None:
        if not 0.0 < self.failure_rate <= 1.0:
            raise ConfigError(f"breaker failure_rate {self.failure_rate} must be in (0, 1]")
        if self.window_seconds <= 0 or self.open_seconds <= 0:
            raise ConfigError("breaker window_seconds and open_seconds must be > 0")
        if self.min_calls < 1 or self.half_open_probes < 1:
            raise ConfigError("breaker min_calls and half_open_probes must be >= 1")
        if self.window_calls < self.min_calls:
            raise ConfigError("breaker window_calls must be >= min_calls")


class BreakerState(enum.IntEnum):
    """Numeric values are what ``processor_circuit_state`` exports."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class Breaker:
    """The state of one dependency's breaker, shared by every handler that names it."""

    def __init__(
        self,
        name: str,
        config: BreakerConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, BreakerState], None] = lambda name, state: None,
    ) -> None:
        self.name = name
        self._config = config
        self._clock = clock
        self._on_change = on_change
        self._calls: collections.deque[tuple[float, bool]] = collections.deque()
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._probes_out = 0
        self._probes_ok = 0
        self._changed = asyncio.Event()

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self._config.open_seconds:
            self._set(BreakerState.HALF_OPEN)
        return self._state

    def allow(self) -> bool:
        """May a call go now? In half-open only ``half_open_probes`` calls are let through at once."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and self._probes_out < self._config.half_open_probes:
            self._probes_out += 1
            return True
        return False

    def record(self, ok: bool) -> None:
        """Report the outcome of a call that ``allow()`` let through."""
        now = self._clock()
        if self._state is BreakerState.HALF_OPEN:
            self._probes_out = max(0, self._probes_out - 1)
            if not ok:
                self._open(now)
                return
            self._probes_ok += 1
            if self._probes_ok >= self._config.half_open_probes:
                self._calls.clear()
                self._set(BreakerState.CLOSED)
            return
        if self._state is BreakerState.OPEN:
            return  # a call that started before the breaker opened; its outcome says nothing new
        self._calls.append((now, ok))
        horizon = now - self._config.window_seconds
        while self._calls and (self._calls[0][0] < horizon or len(self._calls) > self._config.window_calls):
            self._calls.popleft()
        failures = sum(1 for _, good in self._calls if not good)
        if len(self._calls) >= self._config.min_calls and failures / len(self._calls) >= self._config.failure_rate:
            self._open(now)

    def abandon(self) -> None:
        """A call that ``allow()`` let through ended without an outcome (it was cancelled)."""
        if self._state is BreakerState.HALF_OPEN:
            self._probes_out = max(0, self._probes_out - 1)

    async def wait_until_allowed(self) -> None:
        """Return once a call may go (the breaker closed, or a half-open probe slot is ours)."""
        while not self.allow():
            self._changed.clear()
            remaining = self._config.open_seconds - (self._clock() - self._opened_at)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=max(remaining, 0.05))

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._probes_out = 0
        self._probes_ok = 0
        self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        if state is not self._state:
            self._state = state
            self._changed.set()
            self._on_change(self.name, state)
