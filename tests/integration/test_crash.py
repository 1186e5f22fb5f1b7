"""A worker SIGKILLed in the middle of a stream and restarted: every event is accounted for and no side
effect happens twice. Handler re-runs are allowed only for the events in flight at the kill (the crash
windows of processor.runtime.dedup); the downstream's idempotency key absorbs them."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import redis

from tests.conftest import Backend
from tests.support import bed_worker, event, produce, read_topic

EVENTS = 600
MAX_BATCH = 500  # processor.runtime.partitions default: at most this many events of a partition are in flight


def test_sigkill_mid_stream_loses_nothing(backend: Backend, unique: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(backend.redis_url)
    options = {"latency_ms": "5", "lease_seconds": "5"}
    first = bed_worker(backend.env(), unique, tmp_path, **options).start()
    second = None
    ids = [f"k{i}" for i in range(EVENTS)]

    def feed() -> None:
        for start in range(0, EVENTS, 50):
            chunk = ids[start:start + 50]
            produce(backend.bootstrap_servers, f"{unique}.in", [event(i, n) for n, i in enumerate(chunk)])
            time.sleep(0.3)

    try:
        first.wait_assigned(["a"])
        producer = threading.Thread(target=feed)
        producer.start()
        first.wait_for(lambda: first.metrics().value("processor_events_total", handler="a", outcome="success") >= 150,
                       60, "150 events processed before the kill")
        first.kill()
        second = bed_worker(backend.env(), unique, tmp_path, **options).start()
        producer.join()
        out = read_topic(backend.bootstrap_servers, f"{unique}.a.out", expect=EVENTS, timeout=120, settle=3)
        counts = Counter(m.json()["event_id"] for m in out)
        assert set(counts) == set(ids), f"lost: {sorted(set(ids) - set(counts))[:10]}"
        for m in out:  # a repeated output is the same event, recognisable by its id header
            assert m.headers["x-processor-event-id"] == m.json()["event_id"].encode()
        effects = client.hgetall(f"sim:{unique}-a:effects")
        assert len(effects) == EVENTS
        # The simulated service keys its records by idempotency key: "<topology>:<handler>:<event id>".
        completed = {k.decode().rsplit(":", 1)[1]: int(v)
                     for k, v in client.hgetall(f"sim:{unique}-a:completed").items()}
        assert set(completed) == set(ids)
        rerun = [k for k, v in completed.items() if v > 1]
        assert len(rerun) <= MAX_BATCH * 3, f"{len(rerun)} handler re-runs: more than were in flight"
        assert sum(counts.values()) - EVENTS <= MAX_BATCH * 3
    finally:
        first.kill()
        if second is not None:
            second.stop()


def test_sigterm_mid_stream_finishes_in_flight_work(backend: Backend, unique: str, tmp_path: Path) -> None:
    """A graceful stop lets the batches in flight finish and commits them: after a restart no handler
    runs twice and no output repeats."""
    client = redis.Redis.from_url(backend.redis_url)
    options = {"latency_ms": "5", "lease_seconds": "5", "handlers": "a"}
    first = bed_worker(backend.env(), unique, tmp_path, **options).start()
    second = None
    ids = [f"g{i}" for i in range(400)]
    try:
        first.wait_assigned(["a"])
        produce(backend.bootstrap_servers, f"{unique}.in", [event(i, n) for n, i in enumerate(ids)])
        first.wait_for(lambda: first.metrics().value("processor_events_total", handler="a", outcome="success") >= 100,
                       60, "100 events processed before the stop")
        first.stop()
        second = bed_worker(backend.env(), unique, tmp_path, **options).start()
        out = read_topic(backend.bootstrap_servers, f"{unique}.a.out", expect=len(ids), timeout=90, settle=3)
        counts = Counter(m.json()["event_id"] for m in out)
        assert set(counts) == set(ids)
        assert max(counts.values()) == 1, counts.most_common(3)
        completed = client.hgetall(f"sim:{unique}-a:completed")
        assert len(completed) == len(ids)
        assert set(completed.values()) == {b"1"}
    finally:
        first.kill()
        if second is not None:
            second.stop()
