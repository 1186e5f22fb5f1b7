"""Two replicas of one topology share its partitions; when one stops gracefully (SIGTERM) mid-stream, the other
takes over every partition and each event is still processed, and its output produced, exactly once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import redis

from tests.conftest import Backend
from tests.support import WorkerProcess, bed_worker, event, produce, read_topic

PARTITIONS = 6
# The handler's consumer group reads the source and its two default retry tiers ("1s,2s"), 6 partitions each.
GROUP_PARTITIONS = 3 * PARTITIONS


def assigned(worker: WorkerProcess) -> int:
    return int(worker.metrics().value("processor_assigned_partitions", handler="a"))


def test_graceful_stop_of_a_replica_hands_over_without_loss_or_repeat(
    backend: Backend, unique: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(backend.redis_url)
    options = {"partitions": str(PARTITIONS), "handlers": "a", "latency_ms": "20"}
    # 20 ms per call: a batch of a partition takes about a second, so the SIGTERM lands while batches run.
    first = bed_worker(backend.env(), unique, tmp_path, **options).start()
    second = bed_worker(backend.env(), unique, tmp_path, **options).start()
    try:
        def split() -> bool:
            counts = [assigned(first), assigned(second)]
            return min(counts) > 0 and sum(counts) == GROUP_PARTITIONS

        first.wait_for(split, 60, f"the {GROUP_PARTITIONS} partitions split between both replicas")
        second.wait_for(split, 5, "the split seen from the second replica")

        completed = f"sim:{unique}-a:completed"
        ids = [f"e{i}" for i in range(600)]
        # Keys e0..e599 spread over the 6 partitions by the default partitioner.
        produce(backend.bootstrap_servers, f"{unique}.in", [event(i, n) for n, i in enumerate(ids[:300])])
        first.wait_for(lambda: client.hlen(completed) >= 150, 30, "about half of the first 300 events")
        second.stop()  # SIGTERM: a graceful leave, not a crash
        produce(backend.bootstrap_servers, f"{unique}.in", [event(i, n) for n, i in enumerate(ids[300:], 300)])

        first.wait_for(lambda: assigned(first) == GROUP_PARTITIONS, 30, "every partition on the surviving replica")
        out = read_topic(backend.bootstrap_servers, f"{unique}.a.out", expect=len(ids), timeout=30, settle=2.0)
        counts = Counter(str(m.json()["event_id"]) for m in out)
        missing = set(ids) - set(counts)
        assert not missing, f"{len(missing)} never processed, e.g. {sorted(missing)[:5]}: {first.tail()}"
        assert set(counts) == set(ids)
        repeated = {i: c for i, c in counts.items() if c > 1}
        assert not repeated, f"outputs repeated after a graceful stop: {sorted(repeated.items())[:5]}"

        calls = client.hgetall(completed)
        assert len(calls) == len(ids)
        assert set(calls.values()) == {b"1"}, [k for k, v in calls.items() if v != b"1"][:5]
        assert assigned(first) == GROUP_PARTITIONS
    finally:
        second.stop()
        first.stop()
