"""The lag monitor against the real broker: exact lag in messages (with batched producers, where the
embedded broker's ListOffsets(latest) would be wrong), lag in seconds that grows with the oldest
unprocessed record, Burrow-style status, and draining to 0 after a restart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import Producer

from tests.conftest import REPO, Backend
from tests.support import WorkerProcess, bed_worker, event, produce, read_topic

K = 250


def lag(monitor: WorkerProcess, group: str, topic: str, name: str = "processor_consumer_lag_messages") -> float:
    return monitor.metrics().value(name, group=group, topic=topic)


def status(monitor: WorkerProcess, group: str) -> str:
    s = monitor.metrics()
    return next((st for st in ("OK", "WARN", "STALL", "STOP", "ERR")
                 if s.value("processor_consumer_lag_status", group=group, status=st) == 1), "none")


def test_lag_is_exact_grows_and_drains(backend: Backend, unique: str, tmp_path: Path) -> None:
    group, source = f"{unique}.a", f"{unique}.in"
    worker = bed_worker(backend.env(), unique, tmp_path).start()
    monitor = WorkerProcess("tests.topologies.testbed", {**backend.env(), "TESTBED_NAME": unique}, tmp_path, "monitor")
    monitor.command = ["monitor", "tests.topologies.testbed", "--interval", "1"]
    restarted = None
    try:
        worker.wait_assigned(["a"])
        produce(backend.bootstrap_servers, source, [event(f"w{i}") for i in range(10)])
        read_topic(backend.bootstrap_servers, f"{unique}.a.out", expect=10, timeout=30, settle=0)
        worker.stop()  # the consumer group now has no member

        monitor.start()
        # Batched produce: one request carries many records (the ListOffsets quirk's trigger).
        producer = Producer({"bootstrap.servers": backend.bootstrap_servers, "linger.ms": 200,
                             "batch.num.messages": 1000})
        for i in range(K):
            producer.produce(source, value=event(f"k{i}")[1], key=str(i % 7).encode())
        assert producer.flush(30) == 0
        monitor.wait_for(lambda: lag(monitor, group, source) == K, 30, f"lag == {K}")
        first = lag(monitor, group, source, "processor_consumer_lag_seconds")
        time.sleep(2.5)
        monitor.wait_for(lambda: lag(monitor, group, source) == K, 5, f"lag still == {K}")
        assert lag(monitor, group, source, "processor_consumer_lag_seconds") > first + 1.5
        monitor.wait_for(lambda: status(monitor, group) == "STOP", 20, "status STOP for a group with no member")

        restarted = bed_worker(backend.env(), unique, tmp_path).start()
        monitor.wait_for(lambda: lag(monitor, group, source) == 0, 60, "lag drained to 0")
        assert lag(monitor, group, source, "processor_consumer_lag_seconds") == 0
        monitor.wait_for(lambda: status(monitor, group) == "OK", 20, "status OK once drained")

        shown = subprocess.run(
            [sys.executable, "-m", "processor", "status", "tests.topologies.testbed", "--metrics-url", monitor.url,
             "--once", "--json"],
            capture_output=True, text=True, timeout=60, cwd=REPO, env={**os.environ, **monitor.env},
        )
        assert shown.returncode == 0, shown.stderr
        snap = json.loads(shown.stdout)
        assert snap["groups"] == {group: "OK"}
        assert {(row["topic"], row["messages"]) for row in snap["lag"] if row["topic"] == source} == {(source, 0)}
        assert [h["handler"] for h in snap["handlers"]] == ["a"]
    finally:
        worker.stop()
        monitor.stop()
        if restarted is not None:
            restarted.stop()
