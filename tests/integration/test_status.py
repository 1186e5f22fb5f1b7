"""`processor status` when every worker is down: the lag per partition, in seconds and its status still come
from the broker, one line says which fields are missing, the JSON has them as null, and it exits 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from processor.dev.servers import free_port
from tests.conftest import REPO, Backend
from tests.support import bed_worker, event, produce, read_topic

BEHIND = 137


def test_status_without_any_worker_reads_the_exact_lag_from_the_broker(backend: Backend, unique: str,
                                                                        tmp_path: Path) -> None:
    group, source = f"{unique}.a", f"{unique}.in"
    worker = bed_worker(backend.env(), unique, tmp_path, partitions="3").start()
    try:
        worker.wait_assigned(["a"])
        produce(backend.bootstrap_servers, source, [event(f"w{i}") for i in range(20)])
        read_topic(backend.bootstrap_servers, f"{unique}.a.out", expect=20, timeout=60, settle=0)
        worker.wait_for(lambda: worker.metrics().value("processor_events_total", handler="a", outcome="success") == 20,
                        30, "20 successes")
    finally:
        worker.stop()  # graceful: its last offsets are committed, and the group has no member left
    produced_at = time.time()
    produce(backend.bootstrap_servers, source, [event(f"k{i}") for i in range(BEHIND)])
    time.sleep(1.0)  # lag in seconds: the oldest unprocessed record is at least this old
    nobody = f"http://127.0.0.1:{free_port()}/metrics"  # no worker listens anywhere
    shown = subprocess.run(
        [sys.executable, "-m", "processor", "status", "tests.topologies.testbed", "--metrics-url", nobody,
         "--once", "--json"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, **backend.env(), "TESTBED_NAME": unique},
    )
    assert shown.returncode == 0, shown.stderr
    lines = [line for line in shown.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, shown.stderr
    assert lines[0].startswith(f"no worker's /metrics answered at {nobody}"), lines[0]
    assert "outcome counts" in lines[0]
    assert "breakers" in lines[0]
    snap = json.loads(shown.stdout)
    assert snap["lag_source"] == "broker"
    source_rows = [row for row in snap["lag"] if row["topic"] == source]
    assert len(source_rows) == 3
    assert sum(row["messages"] for row in source_rows) == BEHIND
    oldest = max(row["seconds"] for row in source_rows)
    assert 1.0 <= oldest <= time.time() - produced_at + 1.0, oldest
    assert all(row["messages"] == 0 for row in snap["lag"] if row["topic"] != source)  # retry tiers: nothing
    assert snap["groups"] == {group: "STOP"}
    assert snap["handlers"] == [{"handler": "a", "success": None, "duplicate": None, "retried": None,
                                 "dead_lettered": None, "invalid": None, "p99_processing_ms": None,
                                 "p99_end_to_end_ms": None}]
    assert snap["breakers"] is None
    assert snap["slos"] == []  # the testbed declares none (tests/unit/test_status.py: null budgets)
    assert snap["metrics_error"]
    assert snap["missing"]

    table = subprocess.run(
        [sys.executable, "-m", "processor", "status", "tests.topologies.testbed", "--metrics-url", nobody, "--once"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, **backend.env(), "TESTBED_NAME": unique, "COLUMNS": "200"},
    )
    assert table.returncode == 0, table.stderr
    assert "STOP" in table.stdout
    assert "from broker" in table.stdout
