"""The pass-through topology `processor bench` runs with ``processor worker processor.bench_topology``.

One handler: the event is decoded and schema-checked by the pipeline (``bench_schemas/bench_event.json``),
deduplicated, and returned unchanged as one Output. Environment variables name everything, so concurrent
bench runs (and the runs of one bench) never share topics, consumer groups or dedup keys:

- ``PROCESSOR_BENCH_NAME``: topology name (so consumer group ``<name>.passthrough``), default ``bench``
- ``PROCESSOR_BENCH_SOURCE``: source topic, default ``<name>.in``
- ``PROCESSOR_BENCH_OUTPUT``: output topic, default ``<name>.out``
- ``PROCESSOR_BENCH_PARTITIONS``: partitions of the topics the worker creates (retry tier, DLQ)
- ``PROCESSOR_BENCH_MARK_FILE``: where the first handler call records its wall clock and CPU ticks
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from processor.bench_proc import write_mark
from processor.retry import Retry
from processor.topology import Context, Output, Topology

NAME = os.environ.get("PROCESSOR_BENCH_NAME", "bench")
SOURCE = os.environ.get("PROCESSOR_BENCH_SOURCE", f"{NAME}.in")
OUTPUT = os.environ.get("PROCESSOR_BENCH_OUTPUT", f"{NAME}.out")
PARTITIONS = os.environ.get("PROCESSOR_BENCH_PARTITIONS")
MARK_FILE = os.environ.get("PROCESSOR_BENCH_MARK_FILE")

topology = Topology(
    NAME,
    schemas_dir=Path(__file__).parent / "bench_schemas",
    partitions=int(PARTITIONS) if PARTITIONS else None,
)

_marked = False


# One retry tier: the pipeline's retry topic is consumed as in any real topology, though nothing fails here.
@topology.handler(source=SOURCE, schema="bench_event", retry=Retry(delays=("1s",)), outputs=(OUTPUT,))
async def passthrough(event: dict[str, Any], ctx: Context) -> list[Output]:
    """Return the event unchanged, to the output topic, keyed like its input."""
    global _marked
    if not _marked and MARK_FILE:
        # The first call is the bench's "first record consumed" (only its batch's decode and dedup claim
        # come before it); a blocking write once per process is harmless.
        write_mark(Path(MARK_FILE))
        _marked = True
    return [Output(OUTPUT, event)]
