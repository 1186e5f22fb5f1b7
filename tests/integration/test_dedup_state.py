"""Dedup's done-marks on a real Redis: their bytes per id, their expiry, and a layout change that must not
hide them (processor.runtime.dedup)."""

from __future__ import annotations

import asyncio

from processor.bench.dedup_memory import measure
from processor.runtime.dedup import Claim, Dedup
from processor.runtime.done_marks import DONE_BUCKETS
from processor.runtime.redis_client import connect
from tests.conftest import Backend

TTL = 3600


def test_a_remembered_id_costs_at_most_40_bytes() -> None:
    sized, eighth = measure(100_000, fill=1.0), measure(100_000, fill=1 / 8)
    assert sized.bytes_per_id <= 40, sized
    assert eighth.bytes_per_id <= 40, eighth
    assert set(sized.encodings) == {"listpack", "int"}, sized.encodings  # no hash grew into a hashtable


def test_done_marks_survive_a_new_rate_expire_by_bucket_and_can_be_forgotten(backend: Backend, unique: str) -> None:
    async def run() -> None:
        client = connect(backend.redis_url)
        try:
            group = f"{unique}.g"
            small = Dedup(client, group=group, owner="w1", lease_seconds=5, ttl_seconds=TTL, peak_rate=1)
            ids = [f"e{i}" for i in range(50)]
            token = small.new_token()
            assert [r.status for r in await small.claim(ids, token)] == [Claim.CLAIMED] * 50
            await small.store_results([(i, b"out") for i in ids], token)
            await small.mark_done(ids)
            assert await client.exists(*[small.key(i) for i in ids]) == 0  # in-flight keys are gone
            # Sized for 10 000x the rate, its hashes are others: the bucket's own count still finds the marks.
            large = Dedup(client, group=group, owner="w2", lease_seconds=5, ttl_seconds=TTL, peak_rate=10_000)
            assert large.marks.hashes_per_bucket > small.marks.hashes_per_bucket
            assert [r.status for r in await large.claim(ids, large.new_token())] == [Claim.DONE] * 50
            assert await large.state("e1") == b"d"
            hashes = [k async for k in client.scan_iter(f"dd:{group}:*")]
            assert hashes
            bucket = small.marks.bucket_seconds
            for key in hashes:  # a TTL after the bucket ends: between one TTL and one TTL and a bucket away
                assert TTL - 5 <= await client.ttl(key) <= TTL + bucket, key
            assert bucket * DONE_BUCKETS >= TTL
            await large.forget(["e1"])
            assert await large.state("e1") is None
            assert [r.status for r in await small.claim(["e1", "e2"], small.new_token())] == [Claim.CLAIMED, Claim.DONE]
        finally:
            await client.aclose()

    asyncio.run(run())
