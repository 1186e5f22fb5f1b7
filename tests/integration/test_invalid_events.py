"""Invalid input against the real broker and Redis: each bad record is dead-lettered once, with its reason and
origin, and never holds back the valid events around it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson
from confluent_kafka import KafkaError, Message, Producer

from tests.conftest import Backend
from tests.support import bed_worker, event, produce, read_topic

Position = tuple[int, int]  # (partition, offset)


def produce_at(bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes]]) -> list[Position]:
    """Produce ``records`` in order and return where the broker put each one."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    positions: list[Position | None] = [None] * len(records)

    def delivered(index: int) -> Callable[[KafkaError | None, Message], None]:
        def report(err: KafkaError | None, msg: Message) -> None:
            partition, offset = msg.partition(), msg.offset()
            assert err is None, f"record {index} was not delivered: {err}"
            assert partition is not None
            assert offset is not None
            positions[index] = (partition, offset)
        return report

    for index, (key, value) in enumerate(records):
        producer.produce(topic, value=value, key=key, on_delivery=delivered(index))
        producer.poll(0)
    assert producer.flush(30) == 0, "not every test record was delivered"
    assert all(p is not None for p in positions)
    return [p for p in positions if p is not None]


def test_invalid_records_are_dead_lettered_with_reason_and_origin(
    backend: Backend, unique: str, tmp_path: Path
) -> None:
    bad: dict[str, tuple[bytes, str]] = {  # key -> (value, expected reason)
        "bad-json": (b'{"event_id": "broken', "invalid_json"),
        "bad-schema": (orjson.dumps({"event_id": "x1", "n": "not-an-int"}), "schema_violation"),
        "bad-no-id": (orjson.dumps({"n": 1}), "missing_event_id"),
        "bad-big": (orjson.dumps({"event_id": "big", "n": 1, "pad": "x" * 2000}), "oversized"),
        "bad-array": (orjson.dumps([{"event_id": "arr", "n": 1}]), "schema_violation"),
    }
    # Valid events between and after the bad ones: 10 before the first, 10 after each.
    ids = [f"v{i}" for i in range(10 * (len(bad) + 1))]
    records = [event(i, n) for n, i in enumerate(ids[:10])]
    for index, (key, (value, _)) in enumerate(bad.items()):
        records.append((key.encode(), value))
        records += [event(i, n) for n, i in enumerate(ids[10 * (index + 1):10 * (index + 2)])]
    later = [f"w{i}" for i in range(20)]  # produced once every bad record is in the DLQ

    worker = bed_worker(backend.env(), unique, tmp_path, max_bytes="512").start()
    try:
        worker.wait_assigned(["a"])
        positions = produce_at(backend.bootstrap_servers, f"{unique}.in", records)
        where = {key: positions[i] for i, (key, _) in enumerate(records) if key.decode() in bad}

        dlq = read_topic(backend.bootstrap_servers, f"{unique}.in.a.dlq", expect=len(bad), timeout=30, settle=1.0)
        assert len(dlq) == len(bad), f"{len(dlq)} dead letters for {len(bad)} bad records: {worker.tail()}"
        by_key = {m.key.decode(): m for m in dlq if m.key is not None}
        assert set(by_key) == set(bad), sorted(by_key)
        for key, (value, reason) in bad.items():
            m = by_key[key]
            partition, offset = where[key.encode()]
            assert m.value == value, key
            assert m.headers["x-processor-reason"] == reason.encode(), (key, m.headers["x-processor-reason"])
            assert m.headers["x-processor-original-topic"] == f"{unique}.in".encode(), key
            assert m.headers["x-processor-original-partition"] == str(partition).encode(), key
            assert m.headers["x-processor-original-offset"] == str(offset).encode(), key
            assert m.headers["x-processor-exception-message"], key
            assert m.headers["x-processor-handler"] == b"a", key

        produce_at(backend.bootstrap_servers, f"{unique}.in", [event(i, n) for n, i in enumerate(later)])
        out = read_topic(backend.bootstrap_servers, f"{unique}.a.out", expect=len(ids) + len(later), settle=2.0)
        counts = Counter(str(m.json()["event_id"]) for m in out)
        assert set(counts) == {*ids, *later}, sorted(set(counts) ^ {*ids, *later})
        assert max(counts.values()) == 1, f"duplicated outputs {counts.most_common(3)}"

        worker.wait_for(
            lambda: worker.metrics().value("processor_events_total", handler="a", outcome="success")
            == len(ids) + len(later),
            10, "success count",
        )
        metrics = worker.metrics()
        assert metrics.value("processor_events_total", handler="a", outcome="invalid") == len(bad)
        assert metrics.value("processor_events_total", handler="a", outcome="dead_lettered") == 0
        reasons = Counter(reason for _, reason in bad.values())
        for reason in ("invalid_json", "schema_violation", "missing_event_id", "oversized"):
            got = metrics.value("processor_dead_letters_total", handler="a", reason=reason)
            assert got == reasons[reason], (reason, got)
        assert metrics.value("processor_dead_letters_total", handler="a") == len(bad)
        # A second read of the DLQ: nothing was dead-lettered twice.
        assert len(read_topic(backend.bootstrap_servers, f"{unique}.in.a.dlq", expect=len(bad), settle=1.0)) == len(bad)
    finally:
        worker.stop()


def test_an_input_too_large_to_dead_letter_whole_is_kept_truncated(backend: Backend, unique: str,
                                                                    tmp_path: Path) -> None:
    """An input the broker took, but which with our failure headers is over the producer's size limit: the
    DLQ keeps the entry with a prefix of the value and the original size, and the partition goes on."""
    worker = bed_worker(backend.env(), unique, tmp_path, max_bytes="512").start()
    try:
        worker.wait_assigned(["a"])
        # Just under the producers' 1 MB limit: the broker takes it; with our failure headers it is over.
        huge = orjson.dumps({"event_id": "huge-1", "n": 1, "pad": "x" * 999_700})
        produce(backend.bootstrap_servers, f"{unique}.in", [(b"k", huge)])
        produce(backend.bootstrap_servers, f"{unique}.in", [event(f"after{i}", i) for i in range(20)])
        out = read_topic(backend.bootstrap_servers, f"{unique}.a.out", expect=20, timeout=60)
        assert sorted(m.json()["event_id"] for m in out) == sorted(f"after{i}" for i in range(20))
        dead = read_topic(backend.bootstrap_servers, f"{unique}.in.a.dlq", expect=1, timeout=30)
        assert len(dead) == 1
        assert dead[0].headers["x-processor-reason"] == b"oversized"
        assert dead[0].headers["x-processor-value-truncated"] == str(len(huge)).encode()
        assert dead[0].value == huge[: len(dead[0].value or b"")]
    finally:
        worker.stop()
