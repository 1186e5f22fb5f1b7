"""A handler that always fails: the event ends in the DLQ with its full context; `dlq replay` after the fix
processes it exactly once, and a second replay does nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import redis

from tests.conftest import REPO, Backend
from tests.support import bed_worker, event, produce, read_topic

TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "processor", *args], capture_output=True, text=True,
                          timeout=90, env={**os.environ, **env}, cwd=REPO)


def test_dead_letter_then_replay_once(backend: Backend, unique: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(backend.redis_url)
    client.set(f"testbed:{unique}:broken", 1)
    worker = bed_worker(backend.env(), unique, tmp_path, retry="1s,2s").start()
    env = {**backend.env(), "TESTBED_NAME": unique, "TESTBED_RETRY": "1s,2s"}
    try:
        worker.wait_assigned(["a"])
        ids = ["d1", "d2", "d3"]
        produce(backend.bootstrap_servers, f"{unique}.in", [event(i, n) for n, i in enumerate(ids)],
                headers=[("traceparent", TRACEPARENT)])
        dead = read_topic(backend.bootstrap_servers, f"{unique}.in.a.dlq", expect=3, timeout=45)
        assert sorted(m.json()["event_id"] for m in dead) == ids
        for m in dead:
            hd = m.headers
            assert hd["x-processor-reason"] == b"retries_exhausted"
            assert hd["x-processor-attempts"] == b"3"
            assert hd["x-processor-exception-class"] == b"processor.errors.RetryableError"
            assert hd["x-processor-exception-message"] == b"dependency is down"
            assert b"RetryableError" in hd["x-processor-exception-stack"]
            assert hd["x-processor-original-topic"] == f"{unique}.in".encode()
            assert int(hd["x-processor-original-offset"]) >= 0
            assert int(hd["x-processor-original-partition"]) in range(3)
            assert int(hd["x-processor-original-timestamp-ms"]) > 0
            assert hd["x-processor-handler"] == b"a"
            assert hd["x-processor-group"] == f"{unique}.a".encode()
            assert hd["x-processor-topology"] == unique.encode()
            assert hd["x-processor-event-id"] == m.json()["event_id"].encode()
            assert int(hd["x-processor-failed-at-ms"]) >= int(hd["x-processor-original-timestamp-ms"])
            assert hd["traceparent"] == TRACEPARENT
        assert read_topic(backend.bootstrap_servers, f"{unique}.a.out", expect=0, timeout=2, settle=0) == []

        listing = cli(env, "dlq", "list", "tests.topologies.testbed", "--json")
        assert listing.returncode == 0, listing.stderr
        rows = orjson.loads(listing.stdout)
        assert sorted(r["event_id"] for r in rows) == ids
        assert {r["reason"] for r in rows} == {"retries_exhausted"}
        assert {r["attempts"] for r in rows} == {3}

        dry = cli(env, "dlq", "replay", "tests.topologies.testbed", "--handler", "a", "--all", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "would replay 3" in dry.stdout

        client.delete(f"testbed:{unique}:broken")  # the fix is deployed
        replay = cli(env, "dlq", "replay", "tests.topologies.testbed", "--handler", "a", "--all", "--rate", "50")
        assert replay.returncode == 0, replay.stderr
        assert "replayed 3, skipped 0" in replay.stdout
        out = read_topic(backend.bootstrap_servers, f"{unique}.a.out", expect=3, timeout=30, settle=2)
        assert Counter(m.json()["event_id"] for m in out) == dict.fromkeys(ids, 1)

        second = cli(env, "dlq", "replay", "tests.topologies.testbed", "--handler", "a", "--all")
        assert "replayed 0, skipped 3" in second.stdout
        missing = cli(env, "dlq", "replay", "tests.topologies.testbed", "--handler", "a", "--event-id", "nope")
        assert missing.returncode == 1
        assert "not found in the DLQ: nope" in missing.stdout
        assert len(client.hgetall(f"dlq-replayed:{unique}.a")) == 3
        out = read_topic(backend.bootstrap_servers, f"{unique}.a.out", expect=3, timeout=10, settle=2)
        assert len(out) == 3
        assert len(client.hgetall(f"sim:{unique}-a:effects")) == 3
    finally:
        worker.stop()
