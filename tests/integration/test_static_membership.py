"""Static membership (PROCESSOR_GROUP_INSTANCE_ID): a replica restarted within the session timeout gets its
partitions back without a rebalance, so the other replicas keep theirs and never stop; no event is lost or
processed twice across the restart."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from processor.dev.devstack import scratch_stack
from tests.conftest import Backend
from tests.support import WorkerProcess, bed_worker, event, produce, read_topic

PARTITIONS = 6
GROUP_PARTITIONS = 3 * PARTITIONS  # the source and its two default retry tiers


def assigned(worker: WorkerProcess) -> int:
    return int(worker.metrics().value("processor_assigned_partitions", handler="a"))


def rebalances(worker: WorkerProcess) -> int:
    return int(worker.metrics().value("processor_rebalances_total", handler="a"))


@pytest.fixture
def kafka(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """The suite's broker when it is Apache Kafka; else a Kafka node of this test's own: static membership
    is a Kafka feature (the embedded broker's livelocks after a restart, README "Tests")."""
    if backend.kind != "tansu":
        yield backend
        return
    with scratch_stack(tmp_path_factory.mktemp("kafka"), "kafka") as stack:
        yield Backend("kafka", stack.bootstrap_servers, stack.redis_url)


def test_a_static_member_restarts_without_a_rebalance(kafka: Backend, unique: str, tmp_path: Path) -> None:
    backend = kafka
    options = {"partitions": str(PARTITIONS), "handlers": "a"}
    # 30 s: the time a restart may take without the group rebalancing.
    env = {**backend.env(), "KAFKA_SESSION_TIMEOUT_MS": "30000"}
    first = bed_worker({**env, "PROCESSOR_GROUP_INSTANCE_ID": "replica-1"}, unique, tmp_path, **options).start()
    second_env = {**env, "PROCESSOR_GROUP_INSTANCE_ID": "replica-2"}
    second = bed_worker(second_env, unique, tmp_path, **options).start()
    restarted: WorkerProcess | None = None
    try:
        def split(other: WorkerProcess) -> bool:
            counts = [assigned(first), assigned(other)]
            return min(counts) > 0 and sum(counts) == GROUP_PARTITIONS

        first.wait_for(lambda: split(second), 90, "the partitions split between both replicas")
        held, before = assigned(second), rebalances(first)

        ids = [f"e{i}" for i in range(400)]
        produce(backend.bootstrap_servers, f"{unique}.in", [event(i, n) for n, i in enumerate(ids[:200])])
        second.stop()  # SIGTERM: a static member leaves no LeaveGroup, the group waits for it
        produce(backend.bootstrap_servers, f"{unique}.in", [event(i, n) for n, i in enumerate(ids[200:], 200)])
        restarted = bed_worker(second_env, unique, tmp_path, **options).start()
        restarted.wait_for(lambda: split(restarted), 60, "the restarted replica holding its partitions again")

        out = read_topic(backend.bootstrap_servers, f"{unique}.a.out", expect=len(ids), timeout=60, settle=2.0)
        counts = Counter(str(m.json()["event_id"]) for m in out)
        assert set(counts) == set(ids), f"{len(set(ids) - set(counts))} never processed: {restarted.tail()}"
        assert max(counts.values()) == 1, [i for i, c in counts.items() if c > 1][:5]
        assert assigned(restarted) == held
        assert rebalances(first) == before, "the restart rebalanced the group: the first replica was reassigned"
        assert rebalances(restarted) == 1
    finally:
        for worker in (restarted, second, first):
            if worker is not None:
                worker.stop()
