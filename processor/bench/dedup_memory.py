"""``processor bench --dedup-memory``: the Redis memory one remembered event id costs.

A redis-server of its own, empty; ``used_memory`` (``INFO memory``) before and after N ids have each gone
through dedup's whole life: claimed, outputs stored, marked done, a batch at a time as a worker does it.
The difference over N is the bytes per id a window of N ids needs (the claims and stored outputs are gone
by then: only the done-marks stay). It uses Dedup's public calls only, so the same file measures an older
layout when run against an older checkout.

The ids arrive at once, so they share one time bucket: the layout is sized so that they fill it as a
bucket fills at the layout's rate (``fill`` 1: a handler as busy as it is sized for), or a fraction of it
(a handler sized for more than it gets; each hash then holds fewer ids for the same overhead).
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from processor.dev.servers import free_port, start_redis
from processor.runtime import dedup as dedup_module
from processor.runtime.dedup import Dedup

BATCH = 500
OUTPUT_BYTES = 120  # stored outputs of a small order: in Redis only between the handler and the broker's ack


@dataclass(frozen=True)
class DedupMemory:
    """One measurement: ``ids`` remembered for ``ttl_seconds`` in a layout sized for ``peak_rate``."""

    ids: int
    ttl_seconds: int
    peak_rate: float
    bytes_before: int
    bytes_after: int
    keys: int
    encodings: dict[str, int]
    server: str

    @property
    def bytes_per_id(self) -> float:
        return (self.bytes_after - self.bytes_before) / self.ids


def measure(ids: int, ttl_seconds: int = 7 * 24 * 3600, fill: float = 1.0) -> DedupMemory:
    """Start a redis-server, remember ``ids`` event ids, stop it; see the module docstring."""
    # An older checkout has neither DoneMarks nor Dedup's peak_rate: this file measures the "before" there too.
    marks = getattr(dedup_module, "DoneMarks", None)
    peak_rate = ids / marks("", ttl_seconds, 1.0).bucket_seconds / fill if marks else 0.0
    with tempfile.TemporaryDirectory(prefix="processor-dedup-memory-") as tmp:
        port = free_port()
        server = start_redis(port, Path(tmp) / "redis.log", Path(tmp))
        try:
            return asyncio.run(_measure(f"redis://127.0.0.1:{port}/0", ids, ttl_seconds, peak_rate))
        finally:
            server.stop()


async def _measure(url: str, ids: int, ttl_seconds: int, peak_rate: float) -> DedupMemory:
    client = aioredis.Redis.from_url(url)
    try:
        kwargs: dict[str, Any] = {"peak_rate": peak_rate} if peak_rate else {}
        dedup = Dedup(client, group="bench.dedup-memory", owner="bench", lease_seconds=30, ttl_seconds=ttl_seconds,
                      **kwargs)
        before = await _used_memory(client)
        outputs = b"o" * OUTPUT_BYTES
        for start in range(0, ids, BATCH):
            batch = [f"order-{n:012d}" for n in range(start, min(ids, start + BATCH))]
            token = dedup.new_token()
            await dedup.claim(batch, token)
            await dedup.store_results([(i, outputs) for i in batch], token)
            await dedup.mark_done(batch)
        after = await _used_memory(client)
        encodings: dict[str, int] = {}
        async for key in client.scan_iter(count=10_000):
            kind = (await client.object("encoding", key)).decode()
            encodings[kind] = encodings.get(kind, 0) + 1
        server = str((await client.info("server"))["redis_version"])
        return DedupMemory(ids, ttl_seconds, peak_rate, before, after, sum(encodings.values()), encodings, server)
    finally:
        await client.aclose()


async def _used_memory(client: aioredis.Redis) -> int:
    return int((await client.info("memory"))["used_memory"])


def report(m: DedupMemory) -> str:
    """The measurement as the bench prints it."""
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(m.encodings.items()))
    return (f"dedup memory: {m.ids} ids remembered (claimed, outputs stored, done), TTL {m.ttl_seconds}s, laid "
            f"out for {m.peak_rate:g} events/s: used_memory {m.bytes_before} -> {m.bytes_after} bytes, "
            f"{m.bytes_per_id:.1f} bytes per id; {m.keys} keys ({kinds}); redis {m.server}")
