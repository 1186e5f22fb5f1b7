"""Retry tiers against the real broker and Redis: a failed event comes back through each tier no earlier than
its due time, succeeds once, and a record held in a tier never holds back the source topic."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import redis

from tests.conftest import Backend
from tests.support import bed_worker, event, produce, read_topic

Attempt = tuple[int, int, int]  # (attempt, due_ms, now_ms)


def attempts(client: redis.Redis, name: str, handler: str = "a") -> dict[str, list[Attempt]]:
    """The testbed's log of handler calls: event id -> [(attempt, due_ms, now_ms)] in call order."""
    out: dict[str, list[Attempt]] = defaultdict(list)
    for raw in client.lrange(f"testbed:{name}:{handler}:attempts", 0, -1):
        text = raw.decode() if isinstance(raw, bytes) else raw
        event_id, attempt, due_ms, now_ms = text.rsplit("|", 3)
        out[event_id].append((int(attempt), int(due_ms), int(now_ms)))
    return out


def test_event_failing_twice_succeeds_on_the_second_tier_never_before_due(
    backend: Backend, unique: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(backend.redis_url)
    worker = bed_worker(backend.env(), unique, tmp_path, fail_attempts="2", retry="1s,2s").start()
    try:
        worker.wait_assigned(["a"])
        ids = [f"e{i}" for i in range(10)]
        produce(backend.bootstrap_servers, f"{unique}.in", [event(i, n) for n, i in enumerate(ids)])

        out = read_topic(backend.bootstrap_servers, f"{unique}.a.out", expect=len(ids), timeout=30, settle=2.0)
        counts = Counter(str(m.json()["event_id"]) for m in out)
        assert set(counts) == set(ids), f"outputs {sorted(counts)}: {worker.tail()}"
        assert max(counts.values()) == 1, f"duplicated outputs {counts.most_common(3)}"

        calls = attempts(client, unique)
        assert set(calls) == set(ids)
        for event_id in ids:
            seen = calls[event_id]
            assert [a for a, _, _ in seen] == [1, 2, 3], (event_id, seen)
            assert seen[0][1] == 0, (event_id, seen)  # the source record carries no due time
            for attempt, due_ms, now_ms in seen[1:]:
                assert due_ms > 0, (event_id, attempt, seen)
                assert now_ms >= due_ms, f"{event_id} attempt {attempt} ran {due_ms - now_ms} ms before due"
            # Each tier's due time is its delay after the previous attempt failed (no jitter by default).
            assert seen[1][1] - seen[0][2] >= 1000, (event_id, seen)
            assert seen[2][1] - seen[1][2] >= 2000, (event_id, seen)

        worker.wait_for(
            lambda: worker.metrics().value("processor_events_total", handler="a", outcome="success") == len(ids),
            10, "success count",
        )
        metrics = worker.metrics()
        assert metrics.value("processor_retries_total", handler="a", tier="1s") == len(ids)
        assert metrics.value("processor_retries_total", handler="a", tier="2s") == len(ids)
        assert metrics.value("processor_events_total", handler="a", outcome="retried") == 2 * len(ids)
        assert metrics.value("processor_dead_letters_total", handler="a") == 0
        dlq = read_topic(backend.bootstrap_servers, f"{unique}.in.a.dlq", expect=0, timeout=5, settle=2.0)
        assert dlq == [], [m.headers.get("x-processor-reason") for m in dlq]
        completed = client.hgetall(f"sim:{unique}-a:completed")
        assert len(completed) == len(ids)
        assert set(completed.values()) == {b"1"}
    finally:
        worker.stop()


def test_record_held_in_a_retry_tier_does_not_block_the_source_topic(
    backend: Backend, unique: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(backend.redis_url)
    worker = bed_worker(backend.env(), unique, tmp_path, fail_attempts="1", retry="4s").start()
    try:
        worker.wait_assigned(["a"])
        produce(backend.bootstrap_servers, f"{unique}.in", [event("A", 0)])
        worker.wait_for(lambda: len(attempts(client, unique).get("A", [])) >= 1, 20, "A's first attempt")

        # A now waits in the 4 s tier. Fresh events (keys spread over the partitions) go through meanwhile.
        fresh = [f"B{i}" for i in range(12)]
        produce(backend.bootstrap_servers, f"{unique}.in", [event(i, n) for n, i in enumerate(fresh)])
        worker.wait_for(lambda: set(fresh) <= set(attempts(client, unique)), 20, "the fresh events' first attempts")

        out = read_topic(backend.bootstrap_servers, f"{unique}.a.out", expect=1 + len(fresh), timeout=30, settle=2.0)
        counts = Counter(str(m.json()["event_id"]) for m in out)
        assert set(counts) == {"A", *fresh}, f"outputs {sorted(counts)}: {worker.tail()}"
        assert max(counts.values()) == 1, f"duplicated outputs {counts.most_common(3)}"

        calls = attempts(client, unique)
        (a1, _, a1_ms), (a2, a_due, a2_ms) = calls["A"]
        assert (a1, a2) == (1, 2), calls["A"]
        assert a_due - a1_ms >= 4000, calls["A"]  # held for the tier's delay
        assert a2_ms >= a_due, f"A's retry ran {a_due - a2_ms} ms before due"
        for event_id in fresh:
            (b1, _, b1_ms), (b2, b_due, b2_ms) = calls[event_id]
            assert (b1, b2) == (1, 2), (event_id, calls[event_id])
            # The source topic was not held behind A: every fresh event's first attempt came before A was due.
            assert b1_ms < a_due, f"{event_id}'s first attempt came {b1_ms - a_due} ms after A was due"
            assert b2_ms >= b_due, f"{event_id}'s retry ran {b_due - b2_ms} ms before due"
        dlq = read_topic(backend.bootstrap_servers, f"{unique}.in.a.dlq", expect=0, timeout=5, settle=1.0)
        assert dlq == []
    finally:
        worker.stop()
