"""Chaos experiments: reading what the processor wrote, with a plain confluent-kafka consumer.

Every output, retry and dead-letter topic of the topology is read from the beginning; the reader keeps
its position, so each ``catch_up`` reads only what arrived since and returns once every partition is at
its end (the end comes from the fetch response's high watermark, right on every broker, see
``processor.kafka.lag``). Redis is read for the simulated services' ledgers.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from processor.errors import DependencyUnavailable
from processor.runtime.records import InRecord


class TopicReader:
    """Reads ``topics`` from the beginning, incrementally; see the module docstring."""

    def __init__(self, config: Mapping[str, Any], topics: Iterable[str]) -> None:
        self._consumer = Consumer({
            **config, "group.id": f"processor-chaos-reader-{time.monotonic_ns()}", "enable.auto.commit": False,
            "enable.partition.eof": True, "fetch.message.max.bytes": 4_000_000,
        })
        self._topics = list(topics)
        self._assigned: set[tuple[str, int]] = set()
        self._at_end: set[tuple[str, int]] = set()
        self.records: list[InRecord] = []  # everything read so far

    def _assign_new(self) -> None:
        metadata = self._consumer.list_topics(timeout=10).topics
        new = [(t, p) for t in self._topics if t in metadata for p in metadata[t].partitions
               if (t, p) not in self._assigned]
        if new:
            self._consumer.incremental_assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in new])
            self._assigned.update(new)

    def catch_up(self, timeout_seconds: float = 30.0, quiet_seconds: float = 1.0) -> list[InRecord]:
        """Every record that arrived since the last call: until every partition has reported its end and
        nothing new came for ``quiet_seconds`` (the end-of-partition event comes once per arrival at the
        end, so a partition stays "at its end" until a record arrives on it)."""
        self._assign_new()
        out: list[InRecord] = []
        deadline = time.monotonic() + timeout_seconds
        quiet_since = time.monotonic()
        while True:
            if time.monotonic() > deadline:
                raise DependencyUnavailable(f"the topics did not read to their end within {timeout_seconds:.0f}s")
            msg = self._consumer.poll(0.2)
            if msg is None:
                if self._at_end == self._assigned and time.monotonic() - quiet_since >= quiet_seconds:
                    break
                continue
            where = (msg.topic() or "", msg.partition() or 0)
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    self._at_end.add(where)
                    continue
                raise DependencyUnavailable(f"reading {where[0]}: {error.str()}")
            self._at_end.discard(where)
            quiet_since = time.monotonic()
            pairs = cast(list[tuple[str, Any]], msg.headers() or [])
            out.append(InRecord(where[0], where[1], msg.offset() or 0, msg.timestamp()[1], msg.key(), msg.value(),
                              {k: v for k, v in pairs if isinstance(v, bytes)}))
        self.records += out
        return out

    def close(self) -> None:
        self._consumer.close()


@dataclass(frozen=True)
class Ledger:
    """One simulated service's Redis ledger for one handler: per event id, successful calls and effects."""

    completed: Mapping[str, int]
    effects: Mapping[str, int]


def read_ledgers(redis_url: str, topology: str, run_id: str) -> dict[str, Ledger]:
    """Per handler, the ``sim:<service>:completed`` and ``:effects`` entries of this run's events (the
    services key them ``<topology>:<handler>:<event id>``, and this run's event ids start with its id)."""
    client = redis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5)
    completed: dict[str, dict[str, int]] = defaultdict(dict)
    effects: dict[str, dict[str, int]] = defaultdict(dict)
    try:
        for what, into in (("completed", completed), ("effects", effects)):
            for key in client.scan_iter(match=f"sim:*:{what}", count=100):
                for raw_field, raw_value in cast(dict[bytes, bytes], client.hgetall(key)).items():
                    parts = raw_field.decode("utf-8", "replace").split(":", 2)
                    if len(parts) == 3 and parts[0] == topology and parts[2].startswith(run_id + "-"):
                        into[parts[1]][parts[2]] = into[parts[1]].get(parts[2], 0) + int(raw_value)
    except redis.RedisError as exc:
        raise DependencyUnavailable(f"reading the simulated services' ledgers: {exc}") from None
    finally:
        client.close()
    return {h: Ledger(completed.get(h, {}), effects.get(h, {})) for h in {*completed, *effects}}
