"""Dedup on a real local Redis Cluster (three masters, three replicas): every script call's keys in one slot,
the same lifecycle as on one Redis, and an id's state found whichever shard it lands in."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from processor.dev.redis_cluster import start_redis_cluster
from processor.dev.servers import ServerProcess, stop_all
from processor.runtime.dedup import Claim, Dedup

SHARDS = 16


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    nodes = start_redis_cluster(Path(tmp_path_factory.mktemp("redis-cluster")))
    yield nodes
    stop_all(nodes)


def test_the_dedup_lifecycle_on_a_cluster(cluster: list[ServerProcess], unique: str) -> None:
    async def run() -> None:
        client = aioredis.RedisCluster(host="127.0.0.1", port=cluster[0].port)
        try:
            one = Dedup(client, group=f"{unique}.g", owner="w1", lease_seconds=5, ttl_seconds=3600, shards=SHARDS)
            two = Dedup(client, group=f"{unique}.g", owner="w2", lease_seconds=5, ttl_seconds=3600, shards=SHARDS)
            ids = [f"e{i}" for i in range(200)]
            slots = {client.keyslot(one.key(i)) for i in ids}
            assert len(slots) == SHARDS  # spread over the cluster, one slot per shard
            token = one.new_token()
            assert [r.status for r in await one.claim(ids, token)] == [Claim.CLAIMED] * 200
            assert {r.status for r in await two.claim(ids, two.new_token())} == {Claim.BUSY}
            await one.store_results([(i, f"out-{i}".encode()) for i in ids[:100]], token)
            await one.release(ids[100:], token)
            await one.mark_done(ids[:50])
            assert [r.status for r in await two.claim(ids[:50], two.new_token())] == [Claim.DONE] * 50
            assert [r.status for r in await two.claim(ids[100:], two.new_token())] == [Claim.CLAIMED] * 100
            # Stored but within the owner's lease: busy, and (claims stop at the first busy) so is all after it.
            assert Claim.BUSY in {r.status for r in await two.claim(ids[50:100], two.new_token())}
            assert await one.state("e1") == b"d"
            await one.forget(["e1"])
            assert await one.state("e1") is None
        finally:
            await client.aclose()

    asyncio.run(run())
