"""Chaos experiments: the workload. OrderCreated events (``processor.dev.demo.order_created``) produced at a
steady rate, optionally mixed with poison messages, each with an id that names the run.

Every record carries a ``chaos-input`` header with a unique, run-prefixed input id. The processor copies
a record's own headers onto its retry and dead-letter records (``processor.runtime.headers.failure_headers``), so
even an input with no usable event id can be found in a DLQ; outputs are found by their event id, which
is run-prefixed too. That is how the verifier tells this run's records from anything else on the topics.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

import orjson
from confluent_kafka import KafkaError, Message, Producer

from processor.dev.demo import order_created
from processor.runtime.decode import INVALID_JSON, MISSING_EVENT_ID, OVERSIZED, SCHEMA_VIOLATION

INPUT_HEADER = "chaos-input"
PROCESS = "process"
# A huge but valid order: below librdkafka's default message.max.bytes (1,000,000), which bounds what the
# worker can produce, with room for the output's other fields and headers.
HUGE_BYTES = 800_000
# Above the topology's default max_event_bytes (1 MiB): the worker must dead-letter it as "oversized".
OVERSIZED_BYTES = 1_100_000


@dataclass(frozen=True)
class Input:
    """One record the workload produces, and what the processor must make of it."""

    input_id: str
    event_id: str | None  # the id the processor dedups on; None when the record has no usable one
    kind: str
    key: bytes | None
    value: bytes | None
    expect: str = PROCESS  # PROCESS, or the dead-letter reason every handler must give
    partition: int | None = None  # None: the producer's partitioner chooses


@dataclass(frozen=True)
class WorkloadSpec:
    """How many events, over how long, and which extras."""

    events: int
    duration_seconds: float
    duplicates: int = 0  # extra copies of random orders, same key (dedup skips them)
    poison: bool = False  # the poison-message mix of ``poison_inputs``
    oversized: int = 0  # records above the topology's max_event_bytes (1 MiB by default)


def _order(run_id: str, n: int, rng: random.Random) -> dict[str, Any]:
    event = order_created(rng)
    event["event_id"] = f"{run_id}-e{n}"
    return event


def build_inputs(run_id: str, spec: WorkloadSpec, partitions: int, seed: int = 7) -> list[Input]:
    """The records of one run, in the order they are produced (duplicates and poison spread through)."""
    rng = random.Random(seed)
    inputs: list[Input] = []
    for n in range(spec.events):
        event = _order(run_id, n, rng)
        inputs.append(Input(f"{run_id}-i{n}", event["event_id"], "order", event["order_id"].encode(),
                            orjson.dumps(event)))
    for n in range(spec.duplicates):
        original = inputs[rng.randrange(spec.events)]
        inputs.append(replace(original, input_id=f"{run_id}-d{n}", kind="duplicate"))
    if spec.poison:
        inputs += poison_inputs(run_id, rng, partitions)
    for n in range(spec.oversized):
        event = {**_order(run_id, 8_000_000 + n, rng), "shipping_address": "x" * OVERSIZED_BYTES}
        inputs.append(Input(f"{run_id}-oversized-{n}", None, "oversized", event["order_id"].encode(),
                            orjson.dumps(event), expect=OVERSIZED))
    head, tail = inputs[:1], inputs[1:]
    rng.shuffle(tail)
    return head + tail


def poison_inputs(run_id: str, rng: random.Random, partitions: int, copies: int = 5) -> list[Input]:
    """Records a worker must survive: every one is dead-lettered with its reason, or processed once."""
    out: list[Input] = []
    for c in range(copies):
        def pid(kind: str, c: int = c) -> str:
            return f"{run_id}-{kind}-{c}"

        wrong_types = {**_order(run_id, 2_000_000 + c, rng), "total_cents": "12.50"}
        wrong_types["items"] = [{"sku": "SKU-1", "quantity": "two", "unit_price_cents": 100}]
        unknown = {**_order(run_id, 3_000_000 + c, rng), "coupon_code": "FREE"}
        schema_invalid = {"event_id": f"{run_id}-s{c}", "order_id": 7}
        no_id = {k: v for k, v in _order(run_id, 4_000_000 + c, rng).items() if k != "event_id"}
        huge = {**_order(run_id, 5_000_000 + c, rng), "shipping_address": "x" * HUGE_BYTES}
        no_key = _order(run_id, 6_000_000 + c, rng)
        twin = _order(run_id, 7_000_000 + c, rng)
        first = rng.randrange(partitions)
        out += [
            Input(pid("malformed"), None, "malformed-json", None, b'{"event_id": "' + pid("m").encode(),
                  expect=INVALID_JSON),
            Input(pid("garbage"), None, "binary-garbage", b"k", bytes(rng.randrange(256) for _ in range(64)) + b"\xff",
                  expect=INVALID_JSON),
            Input(pid("null"), None, "null-value", b"k", None, expect=INVALID_JSON),
            Input(pid("schema"), None, "schema-invalid", b"k", orjson.dumps(schema_invalid), expect=SCHEMA_VIOLATION),
            Input(pid("types"), None, "wrong-types", b"k", orjson.dumps(wrong_types), expect=SCHEMA_VIOLATION),
            Input(pid("unknown"), None, "unknown-fields", b"k", orjson.dumps(unknown), expect=SCHEMA_VIOLATION),
            Input(pid("noid"), None, "missing-event-id", b"k", orjson.dumps(no_id), expect=MISSING_EVENT_ID),
            Input(pid("huge"), huge["event_id"], "huge", huge["order_id"].encode(), orjson.dumps(huge)),
            Input(pid("nokey"), no_key["event_id"], "missing-key", None, orjson.dumps(no_key)),
            # The same event id on two partitions: two consumers may see it at once; it is processed once.
            Input(pid("twin-a"), twin["event_id"], "cross-partition-duplicate", twin["order_id"].encode(),
                  orjson.dumps(twin), partition=first),
            Input(pid("twin-b"), twin["event_id"], "cross-partition-duplicate", twin["order_id"].encode(),
                  orjson.dumps(twin), partition=(first + 1) % partitions),
        ]
    return out


@dataclass
class Production:
    """What the producer did: when each input went out, and what the broker refused."""

    produced_at: dict[str, float] = field(default_factory=dict)
    delivered: int = 0
    errors: list[str] = field(default_factory=list)
    finished_at: float | None = None


class Workload:
    """Produces ``inputs`` to ``topic`` evenly over ``duration_seconds``, in a thread."""

    def __init__(self, config: dict[str, Any], topic: str, inputs: Sequence[Input], duration_seconds: float) -> None:
        # Big enough for an oversized record: the worker, not the producer, must refuse it.
        self._producer = Producer({**config, "enable.idempotence": True, "linger.ms": 5,
                                   "message.max.bytes": 4_000_000, "message.timeout.ms": 120_000})
        self.topic = topic
        self._inputs = list(inputs)
        self._duration = duration_seconds
        self.production = Production()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-workload", daemon=True)
        self.started_at = 0.0

    def start(self) -> Workload:
        self.started_at = time.time()
        self._thread.start()
        return self

    def join(self, timeout_seconds: float) -> bool:
        """Wait for every record to be produced and acknowledged; False when the time ran out."""
        self._thread.join(timeout_seconds)
        return not self._thread.is_alive()

    def stop(self) -> None:
        """Stop producing (an experiment that failed early): the thread ends within a few seconds."""
        self._stop.set()
        self._thread.join(10)

    @property
    def produced(self) -> int:
        with self._lock:
            return len(self.production.produced_at)

    def _on_delivery(self, input_id: str, err: KafkaError | None, _msg: Message) -> None:
        with self._lock:
            if err is None:
                self.production.delivered += 1
            else:
                self.production.errors.append(f"{input_id}: {err.str()}")

    def _reporter(self, input_id: str) -> Callable[[KafkaError | None, Message], None]:
        return lambda err, msg: self._on_delivery(input_id, err, msg)

    def _run(self) -> None:
        interval = self._duration / max(1, len(self._inputs))
        start = time.monotonic()
        for n, record in enumerate(self._inputs):
            delay = start + n * interval - time.monotonic()
            if self._stop.wait(delay) if delay > 0 else self._stop.is_set():
                break
            extra: dict[str, Any] = {} if record.partition is None else {"partition": record.partition}
            while True:
                try:
                    self._producer.produce(
                        self.topic, value=record.value, key=record.key,
                        headers=cast(Any, [(INPUT_HEADER, record.input_id.encode())]),
                        on_delivery=self._reporter(record.input_id), **extra,
                    )
                    break
                except BufferError:
                    self._producer.poll(0.1)  # the broker is away and the local queue is full: wait
                    if self._stop.is_set():
                        break
            with self._lock:
                self.production.produced_at[record.input_id] = time.time()
            self._producer.poll(0)
        left = self._producer.flush(5 if self._stop.is_set() else 120)
        with self._lock:
            if left:
                self.production.errors.append(f"{left} records not acknowledged within 120 s")
            self.production.finished_at = time.time()
