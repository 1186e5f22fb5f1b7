"""Dedup on a real local Redis Cluster (three masters, three replicas): every script call's keys in one slot,
the same lifecycle as on one Redis, and an id's state found whichever shard it lands in."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from processor.dev.redis_cluster import cluster_ok, start_redis_cluster
from processor.dev.servers import ServerProcess, free_port, redis_binary, spawn, stop_all, wait_ready
from processor.runtime.dedup import Claim, Dedup
from tests.conftest import REPO, Backend
from tests.support import bed_worker, event, produce, read_topic

SHARDS = 16


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    nodes = start_redis_cluster(Path(tmp_path_factory.mktemp("redis-cluster")))
    yield nodes
    stop_all(nodes)


def test_the_dedup_lifecycle_on_a_cluster(cluster: list[ServerProcess], unique: str) -> None:
    async def run() -> None:
        client = aioredis.RedisCluster(host="127.0.0.1", port=cluster[0].port)
        try:
            one = Dedup(client, group=f"{unique}.g", owner="w1", lease_seconds=5, ttl_seconds=3600, shards=SHARDS)
            two = Dedup(client, group=f"{unique}.g", owner="w2", lease_seconds=5, ttl_seconds=3600, shards=SHARDS)
            ids = [f"e{i}" for i in range(200)]
            slots = {client.keyslot(one.key(i)) for i in ids}
            assert len(slots) == SHARDS  # spread over the cluster, one slot per shard
            token = one.new_token()
            assert [r.status for r in await one.claim(ids, token)] == [Claim.CLAIMED] * 200
            assert {r.status for r in await two.claim(ids, two.new_token())} == {Claim.BUSY}
            await one.store_results([(i, f"out-{i}".encode()) for i in ids[:100]], token)
            await one.release(ids[100:], token)
            await one.mark_done(ids[:50])
            assert [r.status for r in await two.claim(ids[:50], two.new_token())] == [Claim.DONE] * 50
            assert [r.status for r in await two.claim(ids[100:], two.new_token())] == [Claim.CLAIMED] * 100
            # Stored but within the owner's lease: busy, and (claims stop at the first busy) so is all after it.
            assert Claim.BUSY in {r.status for r in await two.claim(ids[50:100], two.new_token())}
            assert await one.state("e1") == b"d"
            await one.forget(["e1"])
            assert await one.state("e1") is None
        finally:
            await client.aclose()

    asyncio.run(run())


def test_a_worker_on_the_cluster_processes_each_unique_event_once(
    cluster: list[ServerProcess], backend: Backend, unique: str, tmp_path: Path,
) -> None:
    env = {**backend.env(), "REDIS_URL": f"redis://{cluster[0].address}/0", "REDIS_MODE": "cluster"}
    worker = bed_worker(env, unique, tmp_path).start()
    try:
        worker.wait_assigned(["a"])
        ids = [f"e{i}" for i in range(200)]
        records = [event(i, n) for n, i in enumerate(ids)] + [event(ids[i], i) for i in range(0, 200, 5)]
        produce(backend.bootstrap_servers, f"{unique}.in", records)
        out = read_topic(backend.bootstrap_servers, f"{unique}.a.out", expect=200, settle=2.0)
        counts = Counter(m.json()["event_id"] for m in out)
        assert set(counts) == set(ids)
        assert max(counts.values()) == 1, counts.most_common(3)
        metrics = worker.metrics()
        assert metrics.value("processor_events_total", handler="a", outcome="success") == 200
        assert metrics.value("processor_events_total", handler="a", outcome="duplicate") == 40
        client = redis.RedisCluster(host="127.0.0.1", port=cluster[0].port)
        assert set(client.hgetall(f"sim:{unique}-a:completed").values()) == {b"1"}
        assert len(client.hgetall(f"sim:{unique}-a:completed")) == 200
        client.close()
    finally:
        worker.stop()


@pytest.mark.parametrize(("where", "mode", "says"), [
    ("lone", "single", "is a Redis Cluster node: set REDIS_MODE=cluster"),
    ("lone", "cluster", "the cluster's state is fail, not ok"),
    ("single", "cluster", "is not a Redis Cluster node"),
])
def test_the_worker_refuses_a_redis_mode_that_cannot_work(
    tmp_path: Path, backend: Backend, where: str, mode: str, says: str,
) -> None:
    lone = None
    url = backend.redis_url
    if where == "lone":  # a cluster node that serves no slot
        port = free_port()
        lone = spawn("lone", [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                              "--cluster-config-file", "nodes.conf", "--dir", str(tmp_path)],
                     port, tmp_path / "redis.log")
        wait_ready([lone], lambda address: cluster_ok(address) or _pings(address))
        url = f"redis://{lone.address}/0"
    try:
        env = {**os.environ, **backend.env(), "REDIS_URL": url, "REDIS_MODE": mode, "TESTBED_NAME": "refused"}
        shown = subprocess.run([sys.executable, "-m", "processor", "worker", "tests.topologies.testbed"],
                               capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
        assert shown.returncode != 0
        lines = [line for line in shown.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, shown.stderr
        assert says in lines[0]
    finally:
        if lone is not None:
            stop_all([lone])


def _pings(address: str) -> bool:
    try:
        return bool(redis.Redis.from_url(f"redis://{address}/0", socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


@pytest.mark.parametrize("wait_replicas", [0, 1])
def test_a_master_killed_under_load(tmp_path: Path, backend: Backend, unique: str, wait_replicas: int) -> None:
    # A cluster of its own: this one loses a master. Its replica is cut off for a second first, so writes the
    # master acknowledged are missing there when it is promoted (replication is asynchronous; on one host
    # it lags by well under a millisecond, and a bare kill rarely catches a write in flight). Every id is
    # produced again after the failover: the handler runs that costs are counted, and side effects stay once
    # (idempotency keys). With REDIS_WAIT_REPLICAS=1 a dedup write returns only once the replica has it.
    nodes = start_redis_cluster(tmp_path / "cluster")
    try:
        env = {**backend.env(), "REDIS_URL": f"redis://{nodes[0].address}/0", "REDIS_MODE": "cluster",
               "REDIS_WAIT_REPLICAS": str(wait_replicas), "REDIS_WAIT_TIMEOUT_MS": "3000"}
        worker = bed_worker(env, unique, tmp_path, latency_ms="5", ledger_url=backend.redis_url).start()
        try:
            worker.wait_assigned(["a"])
            ids = [f"e{i}" for i in range(3000)]
            records = [event(i, n) for n, i in enumerate(ids)]
            client = redis.RedisCluster(host="127.0.0.1", port=nodes[0].port)
            victim = next(n for n in nodes if n.port == client.get_node_from_key(
                f"dedup:{{{unique}.a:0}}:x").port)
            replica_port = int(redis.Redis(port=victim.port).info("replication")["slave0"]["port"])
            replica = next(n for n in nodes if n.port == replica_port)
            for start in range(0, 3000, 300):  # 10 slices; the replica paused, then its master killed
                produce(backend.bootstrap_servers, f"{unique}.in", records[start:start + 300])
                if start == 900:
                    # Paused, the replica would still read what the master sent into its socket: cut the link.
                    replica.signal(signal.SIGSTOP)
                    redis.Redis(port=victim.port).client_kill_filter(_type="replica")
                    time.sleep(1.0)
                    victim.signal(signal.SIGKILL)
                    replica.signal(signal.SIGCONT)
                time.sleep(0.3)
            read_topic(backend.bootstrap_servers, f"{unique}.a.out", expect=3000, timeout=120, settle=1.0)
            produce(backend.bootstrap_servers, f"{unique}.in", records)  # every id again
            worker.wait_for(lambda: sum(worker.metrics().value("processor_events_total", handler="a", outcome=o)
                                        for o in ("success", "duplicate")) >= 6000, 120, "every copy handled")
            out = read_topic(backend.bootstrap_servers, f"{unique}.a.out", expect=3000, timeout=120, settle=5.0)
            counts = Counter(m.json()["event_id"] for m in out)
            assert set(counts) == set(ids)  # nothing lost
            client = redis.RedisCluster(host="127.0.0.1", port=replica.port)
            assert client.get_node_from_key(f"dedup:{{{unique}.a:0}}:x").port == replica.port  # promoted
            ledger = redis.Redis.from_url(backend.redis_url)
            completed = ledger.hgetall(f"sim:{unique}-a:completed")
            effects = ledger.hgetall(f"sim:{unique}-a:effects")
            assert len(effects) == 3000
            assert set(effects.values()) == {b"1"}
            reruns = sum(int(v) - 1 for v in completed.values())
            repeated = sum(c - 1 for c in counts.values())
            print(f"master killed, REDIS_WAIT_REPLICAS={wait_replicas}: {repeated} repeated outputs, "
                  f"{reruns} handler re-runs of 3000 events (each produced twice)")
            if wait_replicas:
                assert (reruns, repeated) == (0, 0)  # the promoted replica had every acknowledged write
            else:
                assert reruns > 0  # the done-marks of the paused second are gone: the gap WAIT closes
                assert reruns <= 3000
        finally:
            worker.stop()
    finally:
        stop_all(nodes)
