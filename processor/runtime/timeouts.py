"""Handler call timeouts with one timer per run of calls, not one per call.

``asyncio.timeout`` schedules and cancels a loop timer for every call: about 4 us each, a tenth of the
pipeline's whole per-event cost on the bench. A ``CallTimer`` serves the calls one task makes one after
another (a batch, or one key's chain of events). Its single timer is armed for the deadline of the call
running when it is armed; when it fires it cancels that call if it is still the one running, re-arms for
the deadline of a later call if one is running, or stays unarmed until the next call starts. Every call is
cancelled at its own start plus ``seconds``, exactly as with ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class CallTimer:
    """Runs awaitables one at a time in the current task, each limited to ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None, "CallTimer needs a task"
        self._task = task
        self._count = 0
        self._running = 0  # the number of the call running now; 0: none
        self._started = 0.0  # when the running call started (loop time)
        self._armed_for = 0  # the call the pending timer was armed for
        self._expired = 0  # the call the timer cancelled
        self._handle: asyncio.TimerHandle | None = None

    async def run(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable``; raise ``TimeoutError`` if it has not finished after ``seconds``."""
        self._count += 1
        call = self._running = self._count
        self._started = self._loop.time()
        if self._handle is None:
            self._arm()
        cancelling = self._task.cancelling()
        try:
            return await awaitable
        except asyncio.CancelledError:
            if self._expired != call:
                raise
            self._expired = 0
            if self._task.uncancel() <= cancelling:  # our cancel, and nobody else's on top of it
                raise TimeoutError from None
            raise
        finally:
            self._running = 0
            if self._expired == call:  # it swallowed our cancel and returned: take the cancel back
                self._expired = 0
                self._task.uncancel()

    def close(self) -> None:
        """Drop the pending timer; call it once the task makes no more calls."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self) -> None:
        self._armed_for = self._running
        self._handle = self._loop.call_at(self._started + self._seconds, self._fire)

    def _fire(self) -> None:
        self._handle = None
        if not self._running:
            return  # between calls: the next one arms the timer again
        if self._running == self._armed_for:
            self._expired = self._running
            self._task.cancel()
        else:
            self._arm()  # a later call is running: arm for its own deadline
