"""The pass-through topology `processor bench` runs with ``processor worker processor.bench.topology``.

One handler: the event is decoded and schema-checked by the pipeline (``schemas/bench_event.json``),
deduplicated, and returned unchanged as one Output. Environment variables name everything, so concurrent
bench runs (and the runs of one bench) never share topics, consumer groups or dedup keys:

- ``PROCESSOR_BENCH_NAME``: topology name (so consumer group ``<name>.passthrough``), default ``bench``
- ``PROCESSOR_BENCH_SOURCE``: source topic, default ``<name>.in``
- ``PROCESSOR_BENCH_OUTPUT``: output topic, default ``<name>.out``
- ``PROCESSOR_BENCH_PARTITIONS``: partitions of the topics the worker creates (retry tier, DLQ)
- ``PROCESSOR_BENCH_MARK_FILE``: where the first handler call records its wall clock and CPU ticks
- ``PROCESSOR_BENCH_FAIL_FIRST=1``: every event's first attempt fails (retryable), so every event takes the
  retry tier; the second attempt's output adds ``due_ms`` (the tier's due time) and ``started_ms`` (when
  the handler started), which the bench's retry-path run compares
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from processor.bench.proc import write_mark
from processor.config import Settings
from processor.runtime.headers import due_at_ms
from processor.topology.retry import Retry
from processor.topology.topology import Context, Output, Topology

NAME = os.environ.get("PROCESSOR_BENCH_NAME", "bench")
SOURCE = os.environ.get("PROCESSOR_BENCH_SOURCE", f"{NAME}.in")
OUTPUT = os.environ.get("PROCESSOR_BENCH_OUTPUT", f"{NAME}.out")
PARTITIONS = os.environ.get("PROCESSOR_BENCH_PARTITIONS")
MARK_FILE = os.environ.get("PROCESSOR_BENCH_MARK_FILE")
FAIL_FIRST = os.environ.get("PROCESSOR_BENCH_FAIL_FIRST") == "1"
RUNS_KEY = os.environ.get("PROCESSOR_BENCH_RUNS_KEY")  # processor.bench.guarantee: count each handler run
RETRY_DELAY = "1s"
PEAK_RATE = os.environ.get("PROCESSOR_BENCH_DEDUP_PEAK_RATE")  # processor.bench.redis_modes: a sized layout

topology = Topology(
    NAME,
    schemas_dir=Path(__file__).parent / "schemas",
    partitions=int(PARTITIONS) if PARTITIONS else None,
    dedup_peak_rate=float(PEAK_RATE) if PEAK_RATE else Topology.dedup_peak_rate,
)

_marked = False


@topology.dependency("runs")
def _runs_store(settings: Settings) -> Any:
    import redis.asyncio

    return redis.asyncio.Redis.from_url(settings.redis_url.reveal())


class FirstAttemptFails(Exception):
    """Raised by every first attempt under ``PROCESSOR_BENCH_FAIL_FIRST=1`` (retryable)."""


# One retry tier: its topic is consumed as in any real topology, though nothing fails unless FAIL_FIRST.
@topology.handler(source=SOURCE, schema="bench_event", retry=Retry(delays=(RETRY_DELAY,)), outputs=(OUTPUT,))
async def passthrough(event: dict[str, Any], ctx: Context) -> list[Output]:
    """Return the event unchanged, to the output topic, keyed like its input."""
    global _marked
    if not _marked and MARK_FILE:
        # The first call is the bench's "first record consumed" (only its batch's decode and dedup claim
        # come before it); a blocking write once per process is harmless.
        write_mark(Path(MARK_FILE))
        _marked = True
    if RUNS_KEY:
        await ctx.dependency("runs").hincrby(RUNS_KEY, str(event["event_id"]), 1)
    if FAIL_FIRST:
        if ctx.attempt == 1:
            raise FirstAttemptFails("the bench's retry-path run fails every first attempt")
        return [Output(OUTPUT, {**event, "due_ms": due_at_ms(ctx.headers), "started_ms": int(time.time() * 1000)})]
    return [Output(OUTPUT, event)]
