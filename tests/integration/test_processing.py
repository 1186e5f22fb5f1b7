"""The reliable processing core against the real broker and Redis: dedup, validation, retries, DLQ."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import redis

from tests.conftest import Backend
from tests.support import bed_worker, event, produce, read_topic


def test_fan_out_processes_each_unique_event_once_per_handler(backend: Backend, unique: str, tmp_path: Path) -> None:
    worker = bed_worker(backend.env(), unique, tmp_path, handlers="a,b").start()
    try:
        worker.wait_assigned(["a", "b"])
        ids = [f"e{i}" for i in range(200)]
        records = [event(i, n) for n, i in enumerate(ids)]
        records += [event(ids[i], i) for i in range(0, 200, 5)]  # 40 duplicates
        produce(backend.bootstrap_servers, f"{unique}.in", records)
        for handler in ("a", "b"):
            out = read_topic(backend.bootstrap_servers, f"{unique}.{handler}.out", expect=200, settle=2.0)
            counts = Counter(m.json()["event_id"] for m in out)
            assert set(counts) == set(ids), handler
            assert max(counts.values()) == 1, f"{handler}: duplicated outputs {counts.most_common(3)}"
            assert all(m.headers["x-processor-event-id"] == m.json()["event_id"].encode() for m in out)
        metrics = worker.metrics()
        for handler in ("a", "b"):
            assert metrics.value("processor_events_total", handler=handler, outcome="success") == 200
            assert metrics.value("processor_events_total", handler=handler, outcome="duplicate") == 40
        client = redis.Redis.from_url(backend.redis_url)
        for handler in ("a", "b"):
            completed = client.hgetall(f"sim:{unique}-{handler}:completed")
            assert len(completed) == 200, handler
            assert set(completed.values()) == {b"1"}, handler
    finally:
        worker.stop()
