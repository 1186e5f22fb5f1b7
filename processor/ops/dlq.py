"""Dead-letter tools: list what is in a topology's DLQs, and replay entries to their handler.

A replay writes the entry back to the handler's first retry topic, due at once and with its attempt count
reset, so only that handler sees it again (the source topic would hand it to every fan-out handler). A
replay ledger in Redis records every entry replayed, so each entry is replayed once however often the
command runs; the handler's dedup skips an event that was processed meanwhile, unless ``force`` clears
its done-mark first.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition

from processor.config import Settings
from processor.errors import ConfigError, DependencyUnavailable
from processor.kafka.producer import client_config
from processor.runtime import headers as h
from processor.runtime.dedup import forget_calls
from processor.runtime.done_marks import DoneMarks
from processor.topology.topology import HandlerSpec, Topology


@dataclass(frozen=True)
class DlqEntry:
    """One dead-lettered record and why it is there."""

    handler: str
    dlq_topic: str
    dlq_partition: int
    dlq_offset: int
    event_id: str | None
    reason: str
    attempts: int
    exception: str
    message: str
    failed_at_ms: int
    original_topic: str
    original_partition: int
    original_offset: int
    original_timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    @property
    def position(self) -> str:
        return f"{self.dlq_partition}:{self.dlq_offset}"

    def summary(self) -> dict[str, object]:
        """A JSON-friendly view (the value as text, cut to 200 characters)."""
        value = (self.value or b"").decode("utf-8", "replace")
        return {
            "handler": self.handler, "dlq": f"{self.dlq_topic}[{self.position}]", "event_id": self.event_id,
            "reason": self.reason, "attempts": self.attempts, "exception": self.exception,
            "message": self.message, "failed_at_ms": self.failed_at_ms,
            "original": f"{self.original_topic}[{self.original_partition}:{self.original_offset}]",
            "original_timestamp_ms": self.original_timestamp_ms, "value": value[:200],
        }


def _entry(spec: HandlerSpec, msg: Message) -> DlqEntry:
    pairs = cast(list[tuple[str, Any]], msg.headers() or [])
    raw = tuple((k, v if isinstance(v, bytes) else b"") for k, v in pairs)
    hd = dict(raw)

    def text(name: str) -> str:
        return hd.get(name, b"").decode("utf-8", "replace")

    def number(name: str) -> int:
        value = text(name)
        return int(value) if value.lstrip("-").isdigit() else -1

    return DlqEntry(
        handler=spec.name, dlq_topic=spec.dlq_topic, dlq_partition=msg.partition() or 0,
        dlq_offset=msg.offset() or 0, event_id=text(h.EVENT_ID) or None, reason=text(h.REASON),
        attempts=number(h.ATTEMPTS), exception=text(h.EXC_CLASS), message=text(h.EXC_MESSAGE),
        failed_at_ms=number(h.FAILED_AT_MS), original_topic=text(h.ORIG_TOPIC),
        original_partition=number(h.ORIG_PARTITION), original_offset=number(h.ORIG_OFFSET),
        original_timestamp_ms=number(h.ORIG_TIMESTAMP_MS), key=msg.key(), value=msg.value(), headers=raw,
    )


def read_entries(settings: Settings, spec: HandlerSpec, timeout_seconds: float = 30.0) -> Iterator[DlqEntry]:
    """Every entry of one handler's DLQ, from the beginning to the end it has now."""
    consumer = Consumer(client_config(settings, **{
        "group.id": f"processor-dlq-reader-{time.monotonic_ns()}", "enable.auto.commit": False,
        # End of partition comes from the fetch response's high watermark, right on every broker.
        "enable.partition.eof": True,
    }))
    try:
        topics = consumer.list_topics(spec.dlq_topic, timeout=10).topics
        meta = topics.get(spec.dlq_topic)
        if meta is None or meta.error is not None:
            return
        partitions = list(meta.partitions)
        consumer.assign([TopicPartition(spec.dlq_topic, p, OFFSET_BEGINNING) for p in partitions])
        at_end: set[int] = set()
        deadline = time.monotonic() + timeout_seconds
        while len(at_end) < len(partitions):
            if time.monotonic() > deadline:
                raise DependencyUnavailable(f"reading {spec.dlq_topic} did not reach its end in {timeout_seconds}s")
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition() or 0)
                    continue
                raise DependencyUnavailable(f"reading {spec.dlq_topic}: {error.str()}")
            yield _entry(spec, msg)
    finally:
        consumer.close()


def list_entries(settings: Settings, topology: Topology, handler: str | None, limit: int | None) -> list[DlqEntry]:
    specs = [topology.get(handler)] if handler else topology.handlers
    entries: list[DlqEntry] = []
    for spec in specs:
        for entry in read_entries(settings, spec):
            entries.append(entry)
            if limit is not None and len(entries) >= limit:
                return entries
    return entries


@dataclass(frozen=True)
class ReplayOutcome:
    """What one replay did (or, with ``dry_run``, would do)."""

    replayed: tuple[DlqEntry, ...]
    already_replayed: tuple[DlqEntry, ...]
    not_found: tuple[str, ...]


def ledger_key(topology: Topology, handler: str) -> str:
    return f"dlq-replayed:{topology.group(handler)}"


def replay(
    settings: Settings,
    topology: Topology,
    handler: str,
    *,
    event_ids: Sequence[str] | None,
    dry_run: bool = False,
    rate_per_second: float | None = None,
    force: bool = False,
) -> ReplayOutcome:
    """Send DLQ entries (all, or those of ``event_ids``) back to ``handler``; see the module docstring."""
    spec = topology.get(handler)
    if not spec.retry_topics:
        raise ConfigError(f"handler {handler} has no retry topic to replay into")
    wanted = set(event_ids) if event_ids is not None else None
    client = redis.Redis.from_url(settings.redis_url.reveal())
    try:
        ledger = {k.decode() if isinstance(k, bytes) else k for k in client.hkeys(ledger_key(topology, handler))}
    except redis.RedisError as exc:
        raise DependencyUnavailable(f"redis: {exc}") from None
    chosen: list[DlqEntry] = []
    skipped: list[DlqEntry] = []
    found: set[str] = set()
    for entry in read_entries(settings, spec):
        if wanted is not None and entry.event_id not in wanted:
            continue
        found.add(entry.event_id or "")
        (skipped if entry.position in ledger and not force else chosen).append(entry)
    missing = tuple(sorted(wanted - found)) if wanted is not None else ()
    if not dry_run and chosen:
        _send(settings, client, topology, spec, chosen, rate_per_second, force)
    client.close()
    return ReplayOutcome(tuple(chosen), tuple(skipped), missing)


def _send(
    settings: Settings, client: redis.Redis, topology: Topology, spec: HandlerSpec, entries: list[DlqEntry],
    rate_per_second: float | None, force: bool,
) -> None:
    if force:
        ids = [e.event_id for e in entries if e.event_id]
        if ids:
            marks = DoneMarks(topology.group(spec.name), topology.dedup_ttl_seconds, topology.dedup_peak_rate)
            script, calls = forget_calls(marks, ids)
            forget = client.register_script(script)
            for keys, args in calls:
                forget(keys=keys, args=args)
    producer = Producer(client_config(settings, **{"enable.idempotence": True, "acks": "all"}))
    target = spec.retry_topics[0]
    interval = 1.0 / rate_per_second if rate_per_second else 0.0
    now_ms = int(time.time() * 1000)
    for entry in entries:
        kept = [(k, v) for k, v in entry.headers if not k.startswith(h.PREFIX) or k.startswith(h.PREFIX + "original")]
        kept += [(h.ATTEMPTS, b"0"), (h.DUE_AT_MS, str(now_ms).encode()),
                 (h.REPLAYED_AT_MS, str(int(time.time() * 1000)).encode())]
        if entry.event_id:
            kept.append((h.EVENT_ID, entry.event_id.encode()))
        producer.produce(target, value=entry.value, key=entry.key, headers=cast(Any, kept))
        producer.poll(0)
        if interval:
            time.sleep(interval)
    if producer.flush(30):
        raise DependencyUnavailable(f"could not deliver every replayed entry to {target} within 30 s")
    # Recorded only once the broker has every replayed record: a crash before this replays again, and the
    # handler's dedup absorbs that.
    client.hset(ledger_key(topology, spec.name), mapping={
        e.position: orjson.dumps({"event_id": e.event_id, "replayed_at_ms": int(time.time() * 1000),
                                  "to": target, "forced": force}) for e in entries
    })
