"""Stalled partitions, forced: a worker's first partition stops being fetched behind its queues' back
(PROCESSOR_FAILPOINT_STALL) while records keep arriving on it. The worker finds it and heals it itself: by
seeking it to the committed offset and resuming it, and, when it stays stalled (``sticky``: the failpoint
pauses it again at every resume), by leaving the group and joining it again. Nothing is lost or run twice."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import Backend
from tests.support import bed_worker, event, produce, read_topic

EVENTS = 400


@pytest.mark.parametrize(("failpoint", "actions"), [("once", {"seek"}), ("sticky", {"seek", "rejoin"})])
def test_a_stalled_partition_is_reported_and_healed(
    backend: Backend, unique: str, tmp_path: Path, failpoint: str, actions: set[str],
) -> None:
    env = {**backend.env(), "PROCESSOR_FAILPOINT_STALL": failpoint, "PROCESSOR_STALL_SECONDS": "4"}
    worker = bed_worker(env, unique, tmp_path, partitions="3").start()
    try:
        worker.wait_assigned(["a"], minimum=3)
        ids = [f"e{i}" for i in range(EVENTS)]
        for start in range(0, EVENTS, 20):  # 20 s of traffic on every partition, the stall 5 s in
            batch = [event(i, n) for n, i in enumerate(ids[start:start + 20])]
            produce(backend.bootstrap_servers, f"{unique}.in", batch)
            time.sleep(1.0)
        out = read_topic(backend.bootstrap_servers, f"{unique}.a.out", expect=EVENTS, timeout=90, settle=2.0)
        counts = Counter(m.json()["event_id"] for m in out)
        assert set(counts) == set(ids)  # nothing lost
        assert max(counts.values()) == 1, counts.most_common(3)
        log = worker.log_path.read_text(errors="replace")
        assert "failpoint PROCESSOR_FAILPOINT_STALL: the fetch of" in log
        assert "is stalled: records to read from offset" in log
        assert "stalled-partition check failed" not in log  # a recovery that raised is no recovery
        metrics = worker.metrics()
        done = {a for a in ("seek", "rejoin")
                if metrics.value("processor_stall_recoveries_total", handler="a", action=a)}
        assert done == actions, log[-3000:]
        assert "is no longer stalled" in log  # reported, then cleared (a once-stall heals between two scrapes)
        worker.wait_for(lambda: worker.metrics().value("processor_stalled_partitions", handler="a") == 0, 30,
                        "the stall cleared")
        assert metrics.value("processor_events_total", handler="a", outcome="success") == EVENTS
    finally:
        worker.stop()
