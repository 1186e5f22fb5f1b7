"""Reading a group's lag from the broker (processor.kafka.lag) while its coordinator is not ready yet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from processor.dev.devstack import scratch_stack

# Four groups read at once from threads, as the monitor does; each prints its lag per partition.
READER = """
import asyncio, sys
from processor.config import Settings
from processor.kafka.lag import read_lag

async def main() -> None:
    settings = Settings.load(overrides={"KAFKA_BOOTSTRAP_SERVERS": sys.argv[1]})
    groups = [f"fresh-{n}" for n in range(4)]
    reads = await asyncio.gather(*[asyncio.to_thread(read_lag, settings, g, ["orders"], 30.0) for g in groups])
    for group, lags in zip(groups, reads):
        print(group, sorted((lag.partition, lag.committed, lag.messages) for lag in lags))

asyncio.run(main())
"""


def test_lag_of_new_groups_on_a_fresh_cluster(tmp_path: Path) -> None:
    # On a fresh Apache Kafka the first group lookups answer COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR or
    # COORDINATOR_LOAD_IN_PROGRESS while __consumer_offsets is created and loaded. Committed offsets read
    # with AdminClient.list_consumer_group_offsets then killed the reader with a SIGSEGV inside librdkafka
    # (4 fresh clusters in 5); the reader must instead wait out the coordinator and answer the exact lag.
    with scratch_stack(tmp_path, "kafka") as stack:
        admin = AdminClient({"bootstrap.servers": stack.bootstrap_servers})
        admin.create_topics([NewTopic("orders", 2, 1)])["orders"].result(30)
        producer = Producer({"bootstrap.servers": stack.bootstrap_servers})
        for n in range(10):
            producer.produce("orders", f"event-{n}".encode(), partition=n % 2)
        assert producer.flush(30) == 0
        read = subprocess.run([sys.executable, "-c", READER, stack.bootstrap_servers],
                              capture_output=True, text=True, timeout=120)
    assert read.returncode == 0, f"exit {read.returncode}: {read.stderr[-2000:]}"
    assert read.stdout.splitlines() == [f"fresh-{n} [(0, -1, 5), (1, -1, 5)]" for n in range(4)]
