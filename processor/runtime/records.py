"""The records an event travels in, transport-neutral: consumed (``InRecord``), to produce (``OutRecord``), a
refused delivery (``DeliveryError``), and the stored-outputs payload dedup keeps for a redelivered event."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class InRecord:
    """One consumed record."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


@dataclass(frozen=True, slots=True)
class OutRecord:
    """A record to produce."""

    topic: str
    value: bytes | None
    key: bytes | None = None
    headers: Headers = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class DeliveryError:
    """Why the broker refused a record; ``retryable`` errors are worth sending again."""

    message: str
    retryable: bool
    too_large: bool = False


def pack_outputs(outputs: Sequence[OutRecord]) -> bytes:
    """An event's outputs as the payload dedup stores (JSON: values are our JSON, keys and headers any bytes)."""
    return orjson.dumps([
        [o.topic, o.value.decode() if o.value is not None else None,
         o.key.decode("latin-1") if o.key is not None else None,
         [[k, v.decode("latin-1")] for k, v in o.headers]]
        for o in outputs
    ])


def unpack_outputs(payload: bytes) -> list[OutRecord]:
    """The outputs ``pack_outputs`` stored."""
    return [
        OutRecord(topic, value.encode() if value is not None else None,
                  key.encode("latin-1") if key is not None else None,
                  [(k, v.encode("latin-1")) for k, v in headers])
        for topic, value, key, headers in orjson.loads(payload)
    ]
