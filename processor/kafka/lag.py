"""Consumer lag, measured: per partition, the group's committed offset, the log end, and the age of the
oldest record the group has not committed.

The log end is the high watermark of a fetch response, never ListOffsets(latest): on the embedded broker
(Tansu) ListOffsets(latest) answers the base offset of the last batch + 1 when producers batch, while the
fetch response's high watermark is right there and on real Kafka. One fetch at the committed offset gives
both the high watermark and the oldest unprocessed record, whose timestamp is the lag in seconds.
On Apache Kafka ListOffsets(latest) is right and answers the same number, but the fetch is needed for the
seconds anyway: asking ListOffsets too would add a request per partition per read and tell nothing new.

The committed offsets come from ``Consumer.committed()`` of a consumer that carries the group's id, never from
``AdminClient.list_consumer_group_offsets``: librdkafka (2.16.0 here) answers a coordinator error in an
OffsetFetch response (COORDINATOR_LOAD_IN_PROGRESS, NOT_COORDINATOR: normal on a fresh cluster and for seconds
after a broker or controller fails over) by asking the handle's consumer group to re-query its coordinator,
and an AdminClient has no consumer group: the process dies of a SIGSEGV in ``rd_kafka_cgrp_op``. Four fresh
Apache Kafka clusters in five killed a lag reader that way within its first second. A consumer that only
assigns and never commits joins no group and moves no offset, so borrowing the group's id is safe.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from processor.config import Settings
from processor.errors import DependencyUnavailable
from processor.kafka.producer import client_config


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """One partition of one group at one moment."""

    group: str
    topic: str
    partition: int
    committed: int  # -1: the group never committed here
    log_start: int
    log_end: int
    oldest_unprocessed_ms: int | None  # record timestamp of the first uncommitted record
    members: int  # active members of the group (0: nobody consumes)

    @property
    def messages(self) -> int:
        return max(0, self.log_end - (self.committed if self.committed >= 0 else self.log_start))

    def seconds(self, now: float) -> float:
        if self.messages == 0 or self.oldest_unprocessed_ms is None:
            return 0.0
        return max(0.0, now - self.oldest_unprocessed_ms / 1000)


_COORDINATOR_MOVING = frozenset({KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                                 KafkaError.COORDINATOR_NOT_AVAILABLE})


def _committed(consumer: Consumer, group: str, tps: list[TopicPartition],
               deadline: float) -> dict[tuple[str, int], int]:
    # The consumer re-queries the coordinator after one of these errors but does not retry the fetch itself.
    while True:
        try:
            answer = consumer.committed(tps, timeout=max(0.1, deadline - time.monotonic()))
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() not in _COORDINATOR_MOVING or time.monotonic() > deadline:
                raise DependencyUnavailable(f"committed offsets of {group}: {error.str()}") from None
            time.sleep(0.2)
            continue
        # -1001 (OFFSET_INVALID): nothing committed there; PartitionLag reads that as -1.
        return {(tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else -1) for tp in answer if tp.error is None}


def _members(admin: AdminClient, group: str) -> int:
    try:
        description = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
    except Exception:
        return -1  # unknown: the evaluator then cannot tell STOP from STALL and says STALL
    return len(description.members)


def read_lag(
    settings: Settings, group: str, topics: Sequence[str], timeout_seconds: float = 10.0
) -> list[PartitionLag]:
    """Lag of ``group`` on every partition of ``topics`` (blocking; run it in a thread)."""
    consumer = Consumer(client_config(settings, **{
        "group.id": group, "enable.auto.commit": False, "enable.auto.offset.store": False,
        "enable.partition.eof": True, "max.partition.fetch.bytes": 16384,
    }))
    try:
        metadata = consumer.list_topics(timeout=timeout_seconds).topics
        tps = [TopicPartition(t, p) for t in topics if t in metadata for p in metadata[t].partitions]
        if not tps:
            return []
        committed = _committed(consumer, group, tps, time.monotonic() + timeout_seconds)
        with AdminClient(client_config(settings)) as admin:  # destroyed here, not by a collector on librdkafka's thread
            members = _members(admin, group)
        start = [TopicPartition(tp.topic, tp.partition, committed.get((tp.topic, tp.partition), -1)) for tp in tps]
        for tp in start:
            if tp.offset < 0:
                tp.offset = OFFSET_BEGINNING
        consumer.assign(start)
        oldest: dict[tuple[str, int], int] = {}
        done: set[tuple[str, int]] = set()
        deadline = time.monotonic() + timeout_seconds
        while len(done) < len(tps):
            if time.monotonic() > deadline:
                raise DependencyUnavailable(f"lag of {group}: no fetch answer within {timeout_seconds}s")
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            key = (msg.topic() or "", msg.partition() or 0)
            error = msg.error()
            if error is not None and error.code() != KafkaError._PARTITION_EOF:
                raise DependencyUnavailable(f"lag of {group}: {error.str()}")
            if error is None and key not in oldest:
                oldest[key] = msg.timestamp()[1]
            if key not in done:
                done.add(key)
                consumer.pause([TopicPartition(key[0], key[1])])
        out = []
        for tp in tps:
            key = (tp.topic, tp.partition)
            low, high = consumer.get_watermark_offsets(tp, cached=True)
            out.append(PartitionLag(group, tp.topic, tp.partition, committed.get(key, -1), low, high,
                                    oldest.get(key), members))
        return out
    finally:
        consumer.close()


def records_beyond(settings: Settings, group: str, positions: Mapping[tuple[str, int], int], waited_seconds: float,
                   timeout_seconds: float = 10.0) -> dict[tuple[str, int], int]:
    """Of ``positions`` ((topic, partition) -> the next offset a worker expects; -1: none yet), those whose log
    goes beyond it and beyond the committed offset with a record there that has waited ``waited_seconds``,
    each with where to seek it: the committed offset, else the log start (blocking; run it in a thread)."""
    out: dict[tuple[str, int], int] = {}
    now = time.time()
    for lag in read_lag(settings, group, sorted({topic for topic, _ in positions}), timeout_seconds):
        key = (lag.topic, lag.partition)
        # The log end alone is not a record to read: a transaction's commit marker stays past the last
        # record for good, and a record produced a moment ago is still on its way in a healthy fetch. The
        # read_committed fetch at the committed offset finds a record only where there is one to process.
        waiting = lag.oldest_unprocessed_ms is not None and lag.seconds(now) >= waited_seconds
        if key in positions and waiting and lag.log_end > max(positions[key], lag.committed, lag.log_start):
            out[key] = lag.committed if lag.committed >= 0 else lag.log_start
    return out
