"""A dependency failing 100%: the breaker opens, the handler's partitions pause, nothing is burned into the
DLQ, and processing resumes once the dependency recovers."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import redis

from tests.conftest import Backend
from tests.support import bed_worker, event, produce, read_topic


def test_open_breaker_pauses_instead_of_dead_lettering(backend: Backend, unique: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(backend.redis_url)
    worker = bed_worker(backend.env(), unique, tmp_path, breaker="1", retry="1s,2s").start()
    try:
        worker.wait_assigned(["a"])
        produce(backend.bootstrap_servers, f"{unique}.in", [event(f"warm{i}", i) for i in range(5)])
        read_topic(backend.bootstrap_servers, f"{unique}.a.out", expect=5, timeout=30, settle=0)

        client.set(f"testbed:{unique}:broken", 1)  # the dependency goes down
        ids = [f"b{i}" for i in range(40)]
        produce(backend.bootstrap_servers, f"{unique}.in", [event(i, n) for n, i in enumerate(ids)])
        worker.wait_for(lambda: worker.metrics().value("processor_circuit_state", breaker="dep") == 2, 30,
                        "the breaker to open")
        worker.wait_for(
            lambda: worker.metrics().value("processor_paused_partitions", handler="a", reason="breaker") > 0, 15,
            "partitions paused by the breaker")
        time.sleep(6)  # an outage longer than every retry tier together (1 s + 2 s)
        assert worker.metrics().value("processor_events_total", handler="a", outcome="dead_lettered") == 0

        client.delete(f"testbed:{unique}:broken")  # the dependency recovers
        out = read_topic(backend.bootstrap_servers, f"{unique}.a.out", expect=45, timeout=60, settle=2)
        counts = Counter(m.json()["event_id"] for m in out)
        assert set(counts) == {*ids, *(f"warm{i}" for i in range(5))}
        assert max(counts.values()) == 1
        assert read_topic(backend.bootstrap_servers, f"{unique}.in.a.dlq", expect=0, timeout=2, settle=0) == []
        final = worker.metrics()
        assert final.value("processor_circuit_state", breaker="dep") == 0
        assert final.value("processor_circuit_opened_total", breaker="dep") >= 1
        assert final.value("processor_paused_partitions", handler="a", reason="breaker") == 0
    finally:
        worker.stop()
