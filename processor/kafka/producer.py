"""confluent-kafka behind two small seams: an asyncio producer that reports delivery, and topic admin.

Faust consumes (group membership, fetching, commits); everything we produce goes through
``DeliveringProducer``: the idempotent librdkafka producer, whose delivery reports resolve one future per
batch, so a batch's offsets are acknowledged only after every record it produced is on the broker. Each
batch is sent as soon as it is handed over (flushed), not after linger.ms.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, cast

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined, unused-ignore]

from processor.config import Settings
from processor.errors import ConfigError, DependencyUnavailable
from processor.runtime.records import DeliveryError, OutRecord

log = logging.getLogger(__name__)

_rdkafka_log = logging.getLogger("librdkafka")
# How long the flush thread holds librdkafka in its flushing state per batch handed over, and how often it
# flushes again while a batch waits for its acks (see DeliveringProducer._flush).
FLUSH_SECONDS = 0.001
REFLUSH_SECONDS = 0.05


def client_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """librdkafka settings for ``settings``, logging through Python logging instead of raw stderr."""
    return {**settings.kafka_client_config(), "logger": _rdkafka_log, **extra}


class _Batch:
    __slots__ = ("errors", "future", "loop", "reports", "size")

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop = loop
        self.size = size
        # Reports come from the poll thread, refusals at produce() from the loop: ``next`` on a count is
        # atomic under the GIL, so exactly one report sees itself as the last, without a lock per record.
        self.reports = itertools.count(1)
        self.errors: list[DeliveryError | None] = [None] * size
        self.future: asyncio.Future[list[DeliveryError | None]] = loop.create_future()

    def done(self, index: int, err: KafkaError | None, _msg: object = None) -> None:
        if err is not None:
            self.errors[index] = DeliveryError(
                err.str(), err.retriable(), err.code() == KafkaError.MSG_SIZE_TOO_LARGE
            )
        if next(self.reports) == self.size:
            # Only the last report of a batch crosses to the event loop.
            self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self.future.done():
            self.future.set_result(self.errors)


class DeliveringProducer:
    """Idempotent producer; ``send`` sends its records at once and resolves when the broker has acknowledged
    every one. A batch the flush thread missed waits ``linger_ms`` or ``REFLUSH_SECONDS``, whichever is shorter."""

    def __init__(self, settings: Settings, client_id: str, linger_ms: int = 5) -> None:
        # No compression: every Kafka client can read what we write without an extra codec library
        # (aiokafka, and so Faust, needs python-lz4 for lz4 batches).
        config = client_config(settings, **{
            "client.id": client_id, "enable.idempotence": True, "acks": "all", "linger.ms": linger_ms,
        })
        self._producer = Producer(config)
        self._stop = threading.Event()
        self._sent = threading.Event()  # a batch is in librdkafka's queue: send it now
        self._awaiting = 0  # batches handed over and not yet acknowledged (written on the event loop only)
        self._poller = threading.Thread(target=self._poll, name=f"{client_id}-delivery", daemon=True)
        self._flusher = threading.Thread(target=self._flush, name=f"{client_id}-flush", daemon=True)
        self._poller.start()
        self._flusher.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def _flush(self) -> None:
        # linger.ms batches records that come one at a time; ours come a batch at a time, and the batch then
        # waits for its acks, so lingering only added linger.ms to every batch (5 ms of its 14 ms processing
        # p50 at a fixed 15 000 events/s, ``processor bench --latency``). librdkafka sends what is queued at once while
        # a flush() lasts. For 1 ms, not until every record is delivered: records queued while it lasts go
        # out as they come, and a flush held until delivery (tried) made the throughput run slower and
        # dearer in CPU per event. Not flush(0) either: it can end before the broker thread wakes to send.
        # A flush can still miss a batch (most likely the broker thread got no CPU within it: seen once in a
        # dozen runs of tests/integration/test_producer.py with both cores kept busy), which then waited for
        # linger.ms: so while any batch awaits its acks, flush again every REFLUSH_SECONDS.
        while True:
            handed_over = self._sent.wait(REFLUSH_SECONDS if self._awaiting else None)
            self._sent.clear()
            if self._stop.is_set():
                return
            if handed_over or self._awaiting:
                self._producer.flush(FLUSH_SECONDS)

    async def send(self, records: Sequence[OutRecord]) -> list[DeliveryError | None]:
        """Produce ``records``; returns, per record, None (delivered) or the broker's error."""
        if not records:
            return []
        batch = _Batch(asyncio.get_running_loop(), len(records))
        produce = self._producer.produce
        self._awaiting += 1
        try:
            for index, record in enumerate(records):
                on_delivery = functools.partial(batch.done, index)
                while True:
                    try:
                        produce(record.topic, value=record.value, key=record.key,
                                headers=cast(Any, record.headers), on_delivery=on_delivery)
                        break
                    except BufferError:
                        # The local queue is full: let the poll thread drain delivery reports.
                        await asyncio.sleep(0.01)
                    except KafkaException as exc:
                        # Refused before it left (too large, unknown topic...): reported like a broker refusal.
                        on_delivery(exc.args[0])
                        break
            self._sent.set()
            return await batch.future
        finally:
            self._awaiting -= 1

    def close(self, timeout_seconds: float = 30.0) -> None:
        """Deliver what is queued (up to the timeout), then stop the poll thread."""
        remaining = self._producer.flush(timeout_seconds)
        if remaining:
            log.error("producer closed with %d records undelivered", remaining)
        self._stop.set()
        self._sent.set()
        self._poller.join()
        self._flusher.join()


def ensure_topics(settings: Settings, names: Iterable[str], partitions: int, replication_factor: int) -> list[str]:
    """Create the topics that do not exist yet; returns the names created. Idempotent."""
    admin = AdminClient(client_config(settings))
    try:
        existing = set(admin.list_topics(timeout=10).topics)
    except KafkaException as exc:
        raise DependencyUnavailable(f"kafka at {settings.kafka_bootstrap_servers}: {exc}") from None
    wanted = [n for n in dict.fromkeys(names) if n not in existing]
    if not wanted:
        return []
    futures = admin.create_topics(
        [NewTopic(n, num_partitions=partitions, replication_factor=replication_factor) for n in wanted],
        operation_timeout=10,
    )
    created = []
    for name, future in futures.items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue  # another replica created it between our list and create: fine
            if error.code() in (KafkaError.INVALID_REPLICATION_FACTOR, KafkaError.INVALID_PARTITIONS):
                raise ConfigError(f"topic {name}: {error.str()}") from None
            raise DependencyUnavailable(f"creating topic {name}: {error.str()}") from None
    wait_for_topics(admin, created, settings.kafka_bootstrap_servers)
    return created


def wait_for_topics(
    admin: AdminClient, names: Sequence[str], servers: str, timeout_seconds: float = 30.0
) -> dict[str, Any]:
    """The first metadata ``admin`` gets that shows every topic of ``names`` with a leader per partition.

    Apache Kafka answers CreateTopics once the controller has the topic; each broker learns of it (and of
    each partition's leader) a moment later, on its own. A consumer that subscribes meanwhile is assigned
    what it sees, then rebalances again when the rest appears."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            topics: dict[str, Any] = admin.list_topics(timeout=5).topics
        except KafkaException:
            topics = {}
        waiting = [n for n in names if n not in topics or not topics[n].partitions
                   or any(p.leader < 0 for p in topics[n].partitions.values())]
        if not waiting:
            return topics
        if time.monotonic() > deadline:
            raise DependencyUnavailable(
                f"kafka at {servers}: {', '.join(sorted(waiting))} without a leader after {timeout_seconds:.0f}s"
            )
        time.sleep(0.1)
