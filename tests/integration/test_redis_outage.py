"""Redis stops answering while events flow: the worker waits for it (never skipping dedup, never dropping an
event), says so in its metrics, and processes every event exactly once when Redis answers again."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import redis

from processor.dev.servers import ServerProcess, free_port, start_redis
from tests.conftest import Backend
from tests.support import bed_worker, event, produce, read_topic

EVENTS = 300
PER_SECOND = 50
# The worker's Redis client gives up on a reply after 5 s (socket_timeout in processor/runtime/worker.py) and only
# then reports Redis down; a shorter pause looks like a slow reply, so the pause is longer than that.
PAUSE_SECONDS = 7.0
# Once Redis answers again the worker's back-off (at most 5 s, processor/runtime/dedup.py) ends and the backlog of
# ~250 events drains in well under a second; 15 s is generous, and far below the 30 s claim lease, so a
# worker that waits out a lease after the outage fails here rather than hiding behind a long timeout.
RECOVERY_SECONDS = 15.0


def dedup_states(url: str, name: str) -> dict[str, int]:
    """How many of the handler's events are in flight in each state (c: claimed, r: results stored), and
    how many done-marks it keeps (d)."""
    client = redis.Redis.from_url(url)
    try:
        values = [client.get(k) for k in client.scan_iter(f"dedup:{name}.a:*")]
        done = sum(client.hlen(k) for k in client.scan_iter(f"dd:{name}.a:*") if not k.endswith(b":n"))
    finally:
        client.close()
    return {**Counter(v[:1].decode() if isinstance(v, bytes) else "?" for v in values), "d": done}


def test_redis_pause_loses_and_duplicates_nothing(backend: Backend, unique: str, tmp_path: Path) -> None:
    # The worker gets a redis-server of its own, so the test can take it away without touching the session's.
    # It runs without persistence (`--save "" --appendonly no`): a restart would come back empty and the dedup
    # state with it, which is a deployment error (processor.runtime.dedup: dedup lasts as long as Redis keeps
    # the done-marks), not an outage the worker can ride out. So the outage is a SIGSTOP/SIGCONT pause:
    # connections hang, nothing answers, and no state is lost.
    server: ServerProcess = start_redis(free_port(), tmp_path / "own-redis.log", tmp_path / "own-redis")
    paused = False
    worker = None
    feeder: threading.Thread | None = None
    try:
        url = f"redis://{server.address}/0"
        worker = bed_worker({**backend.env(), "REDIS_URL": url}, unique, tmp_path).start()
        worker.wait_assigned(["a"])

        ids = [f"e{i}" for i in range(EVENTS)]
        fed: list[int] = []

        def feed() -> None:
            for start in range(0, EVENTS, PER_SECOND):
                chunk = ids[start:start + PER_SECOND]
                fed.append(produce(backend.bootstrap_servers, f"{unique}.in", [event(i, start) for i in chunk]))
                time.sleep(1.0)

        feeder = threading.Thread(target=feed, name="feeder", daemon=True)
        feeder.start()
        time.sleep(1.5)  # let the first events through before the outage

        os.kill(server.pid, signal.SIGSTOP)
        paused = True
        seen_down = False
        resume_at = time.monotonic() + PAUSE_SECONDS
        while time.monotonic() < resume_at:
            try:
                if worker.metrics().value("processor_dependency_up", dependency="redis") == 0:
                    seen_down = True
            except OSError:
                pass
            time.sleep(0.2)
        os.kill(server.pid, signal.SIGCONT)
        paused = False
        resumed = time.monotonic()
        assert seen_down, f"processor_dependency_up{{dependency=redis}} was never 0 in the pause: {worker.tail()}"

        feeder.join(30)
        assert sum(fed) == EVENTS, f"only {sum(fed)} events were produced"
        left = max(1.0, resumed + RECOVERY_SECONDS - time.monotonic())
        out = read_topic(backend.bootstrap_servers, f"{unique}.a.out", expect=EVENTS, timeout=left, settle=2.0)
        counts = Counter(str(m.json()["event_id"]) for m in out)
        missing = set(ids) - set(counts)
        assert not missing, (
            f"{len(missing)} events not processed {RECOVERY_SECONDS:.0f}s after Redis answered again, e.g. "
            f"{sorted(missing)[:5]}; dedup keys: {dedup_states(url, unique)}: {worker.tail()}"
        )
        assert set(counts) == set(ids)
        assert max(counts.values()) == 1, f"duplicated outputs {counts.most_common(3)}"

        client = redis.Redis.from_url(url)
        try:
            completed = client.hgetall(f"sim:{unique}-a:completed")
        finally:
            client.close()
        assert len(completed) == EVENTS, f"{len(completed)} completed downstream calls for {EVENTS} events"
        assert set(completed.values()) == {b"1"}, [k for k, v in completed.items() if v != b"1"][:5]
        worker.wait_for(
            lambda: worker.metrics().value("processor_dependency_up", dependency="redis") == 1, 10, "redis up again"
        )
    finally:
        if paused:
            os.kill(server.pid, signal.SIGCONT)
        if feeder is not None:
            feeder.join(30)
        if worker is not None:
            worker.stop()
        server.stop()
