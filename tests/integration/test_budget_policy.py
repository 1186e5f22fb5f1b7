"""A budget policy acting and recovering on the real broker and Redis.

Handler ``a`` has a 99% delivery SLO and a policy: above 2x burn over a minute, stretch its retry back-off
5x, lower its concurrency to 1, and defer ``b`` (declared low priority). ``a``'s dependency goes down: its
events are dead-lettered after their one retry, the budget burns, and the policy acts (b pauses, a's
retries are due 5 s after their failure instead of 1 s). Once the dependency is back and the minute holds
no more dead letters, the policy is undone: b resumes and processes every event it held. Nothing is lost.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import redis

from tests.conftest import Backend
from tests.support import WorkerProcess, bed_worker, event, produce, read_topic

FIRST, HELD, AFTER = 40, 30, 60


def _active(worker: WorkerProcess, action: str) -> float:
    return worker.metrics().value("processor_budget_policy_active", action=action)


def test_a_burning_budget_defers_the_low_priority_handler_and_stretches_back_off_until_it_recovers(
    backend: Backend, unique: str, tmp_path: Path,
) -> None:
    worker = bed_worker(backend.env(), unique, tmp_path, handlers="a,b", policy="1", breakable="a",
                        retry="1s", partitions="3").start()
    ledger = redis.Redis.from_url(backend.redis_url)
    try:
        worker.wait_assigned(["a", "b"])
        assert _active(worker, "defer:b") == 0
        ledger.set(f"testbed:{unique}:broken", 1)
        produce(backend.bootstrap_servers, f"{unique}.in", [event(f"f{i}", i) for i in range(FIRST)])
        worker.wait_for(lambda: _active(worker, "defer:b") == 1, 60, "the policy to act")
        assert _active(worker, "stretch_backoff") == 1
        assert _active(worker, "lower_concurrency:a") == 1
        acted_at_ms = time.time() * 1000
        b_before = worker.metrics().value("processor_events_total", handler="b", outcome="success")
        produce(backend.bootstrap_servers, f"{unique}.in", [event(f"h{i}", i) for i in range(HELD)])
        time.sleep(4)
        metrics = worker.metrics()
        assert metrics.value("processor_events_total", handler="b", outcome="success") == b_before  # deferred
        assert metrics.value("processor_paused_partitions", handler="b", reason="budget") > 0
        retries = read_topic(backend.bootstrap_servers, f"{unique}.in.a.retry.1s", expect=FIRST + HELD, timeout=60,
                             settle=0.5)
        stretched = [int(m.headers["x-processor-due-at-ms"]) - int(m.headers["x-processor-failed-at-ms"])
                     for m in retries if int(m.headers["x-processor-failed-at-ms"]) > acted_at_ms]
        assert stretched, "no retry was routed while the policy acted"
        assert min(stretched) >= 4900, stretched  # 1 s x 5

        ledger.delete(f"testbed:{unique}:broken")
        deadline = time.monotonic() + 150
        n = 0
        while _active(worker, "defer:b") == 1:  # a trickle of healthy events while the minute clears
            assert time.monotonic() < deadline, "the policy was not undone"
            produce(backend.bootstrap_servers, f"{unique}.in", [event(f"r{n + i}", i) for i in range(5)])
            n += 5
            time.sleep(2)
        assert _active(worker, "stretch_backoff") == 0
        produce(backend.bootstrap_servers, f"{unique}.in", [event(f"z{i}", i) for i in range(AFTER)])
        total = FIRST + HELD + n + AFTER
        out = read_topic(backend.bootstrap_servers, f"{unique}.b.out", expect=total, timeout=90, settle=2.0)
        counts = Counter(m.json()["event_id"] for m in out)
        assert len(counts) == total  # b processed every event it held: nothing dropped
        assert max(counts.values()) == 1
        log = worker.log_path.read_text(errors="replace")
        assert "budget policy of SLO" in log
        assert "acts: burn" in log
        assert "undone: burn" in log
    finally:
        ledger.close()
        worker.stop()
