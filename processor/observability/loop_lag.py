"""How late the worker's event loop runs what is due, exported as ``processor_event_loop_lag_seconds``.

Every fetch, heartbeat, Redis reply, produce and handler call of a worker takes its turn on one event loop.
A handler that blocks it (a synchronous call inside an ``async def``: an HTTP client without ``await``,
``time.sleep``, a long computation) or a CPU the worker has to wait for (a busy neighbour, too few cores
for what runs on them) delays all of them at once: it shows in every latency metric and lag, and as the
cause in none. A task that sleeps ``INTERVAL_SECONDS`` and records how much later than asked it woke up
measures that delay itself: a fraction of a millisecond on a loop with time to spare, the length of the
block on a blocked one. On the bench machine, in seconds where the end-to-end p99 tripled, the loop woke
15-36 ms late against 3-11 ms otherwise (``processor bench --latency`` reports the loop's lag).
"""

from __future__ import annotations

import asyncio

from prometheus_client import Histogram

# Ten samples a second: a block long enough to matter (tens of milliseconds) is caught by the sample due
# during it, and the task's own cost stays out of sight (a timer and an observe, microseconds each).
INTERVAL_SECONDS = 0.1


async def watch(histogram: Histogram, interval: float = INTERVAL_SECONDS) -> None:
    """Record the running loop's lag in ``histogram`` every ``interval`` seconds, until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval  # the clock asyncio schedules timers by
        await asyncio.sleep(interval)
        histogram.observe(max(0.0, loop.time() - due))  # a timer may run up to the clock's resolution early
