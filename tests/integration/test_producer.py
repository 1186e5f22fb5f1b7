"""DeliveringProducer against the real broker: a batch is sent when it is handed over, not after linger.ms,
and ``send`` returns once the broker has every record."""

from __future__ import annotations

import asyncio

from confluent_kafka import Consumer, TopicPartition

from processor.kafka.producer import DeliveringProducer, OutRecord, client_config, ensure_topics
from tests.conftest import Backend

# Far longer than the test's own wait (and under message.timeout.ms, 5 minutes, as librdkafka requires): a
# batch that waited out linger.ms would time the test out.
LINGER_MS = 240_000
WARM_UP = b"warm-up"


async def test_each_batch_is_sent_when_handed_over_not_after_linger(backend: Backend, unique: str) -> None:
    settings = backend.settings()
    topic = f"{unique}.out"
    ensure_topics(settings, [topic], 3, settings.topic_replication_factor)
    producer = DeliveringProducer(settings, client_id=unique, linger_ms=LINGER_MS)
    try:
        await asyncio.wait_for(_warm_up(producer, topic), timeout=60)
        for batch in range(3):  # each batch flushed in turn, not only the first
            records = [OutRecord(topic, f"{batch}-{i}".encode(), str(i).encode()) for i in range(20)]
            assert await asyncio.wait_for(producer.send(records), timeout=60) == [None] * 20
    finally:
        producer.close(timeout_seconds=5)

    consumer = Consumer(client_config(settings, **{"group.id": f"{unique}.reader", "enable.auto.commit": False}))
    consumer.assign([TopicPartition(topic, p, 0) for p in range(3)])
    seen: set[bytes] = set()
    try:
        for _ in range(100):
            for message in consumer.consume(num_messages=100, timeout=0.5):
                if message.error() is None and message.value() != WARM_UP:
                    seen.add(message.value() or b"")
            if len(seen) == 60:
                break
    finally:
        consumer.close()
    assert seen == {f"{batch}-{i}".encode() for batch in range(3) for i in range(20)}


async def _warm_up(producer: DeliveringProducer, topic: str) -> None:
    """A new idempotent producer holds its records until the broker has given it a producer id, so the flush
    after the first sends may find nothing it can send yet: hand over a record every 0.2 s until one batch
    has come back (the flush after a later one sends the earlier ones too)."""
    sends = [asyncio.ensure_future(producer.send([OutRecord(topic, WARM_UP)]))]
    while not any(send.done() for send in sends):
        await asyncio.sleep(0.2)
        sends.append(asyncio.ensure_future(producer.send([OutRecord(topic, WARM_UP)])))
    assert all(errors == [None] for errors in await asyncio.gather(*sends))
