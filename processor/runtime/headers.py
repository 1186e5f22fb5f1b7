"""The headers a retried or dead-lettered record carries: enough to understand and replay the failure.

The original position is set once, at the first failure, and carried unchanged through every tier, so a
DLQ entry always points at the record the producer wrote.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from dataclasses import dataclass

PREFIX = "x-processor-"
ATTEMPTS = PREFIX + "attempts"
DUE_AT_MS = PREFIX + "due-at-ms"
FAILED_AT_MS = PREFIX + "failed-at-ms"
REASON = PREFIX + "reason"
EVENT_ID = PREFIX + "event-id"
HANDLER = PREFIX + "handler"
GROUP = PREFIX + "group"
TOPOLOGY = PREFIX + "topology"
EXC_CLASS = PREFIX + "exception-class"
EXC_MESSAGE = PREFIX + "exception-message"
EXC_STACK = PREFIX + "exception-stack"
ORIG_TOPIC = PREFIX + "original-topic"
ORIG_PARTITION = PREFIX + "original-partition"
ORIG_OFFSET = PREFIX + "original-offset"
ORIG_TIMESTAMP_MS = PREFIX + "original-timestamp-ms"
REPLAYED_AT_MS = PREFIX + "replayed-at-ms"
VALUE_TRUNCATED = PREFIX + "value-truncated"  # the original value's size, when the DLQ holds only a prefix
TRACE_HEADERS = ("traceparent", "tracestate")

MAX_STACK_BYTES = 4096
MAX_MESSAGE_BYTES = 1024


@dataclass(frozen=True, slots=True)
class Origin:
    """Where the event was first written."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int

    @classmethod
    def of(cls, headers: Mapping[str, bytes], topic: str, partition: int, offset: int, ts_ms: int) -> Origin:
        """The origin recorded in ``headers``, else the position of the record in hand."""
        if ORIG_TOPIC in headers:
            return cls(
                headers[ORIG_TOPIC].decode(), int(headers[ORIG_PARTITION]), int(headers[ORIG_OFFSET]),
                int(headers[ORIG_TIMESTAMP_MS]),
            )
        return cls(topic, partition, offset, ts_ms)


def attempts_of(headers: Mapping[str, bytes]) -> int:
    """How many times this event failed before (0 for a record from the source topic)."""
    raw = headers.get(ATTEMPTS)
    return int(raw) if raw else 0


def text(headers: Mapping[str, bytes], name: str) -> str | None:
    """A header's value as text (undecodable bytes replaced), or None when absent."""
    raw = headers.get(name)
    return raw.decode("utf-8", "replace") if raw is not None else None


def due_at_ms(headers: Mapping[str, bytes]) -> int:
    raw = headers.get(DUE_AT_MS)
    return int(raw) if raw else 0


def truncated(text: str, limit: int) -> bytes:
    data = text.encode("utf-8", "replace")
    return data if len(data) <= limit else data[: limit - 3] + b"..."


def format_exception(exc: BaseException) -> str:
    """``traceback.format_exception`` with its chained causes, without the caret lines under each frame:
    Python 3.11 parses every frame's source to draw them, which doubled the cost of a failure's headers."""
    top = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    seen: set[int] = set()
    chained: traceback.TracebackException | None = top
    while chained is not None and id(chained) not in seen:
        seen.add(id(chained))
        chained.stack = traceback.StackSummary.from_list(
            [(f.filename, f.lineno or 0, f.name, f.line) for f in chained.stack]
        )
        chained = chained.__cause__ or chained.__context__
    return "".join(top.format())


def failure_headers(
    *,
    origin: Origin,
    incoming: Mapping[str, bytes],
    topology: str,
    handler: str,
    group: str,
    event_id: str | None,
    attempts: int,
    now_ms: int,
    reason: str,
    exc: BaseException,
    due_ms: int | None = None,
) -> list[tuple[str, bytes]]:
    """Headers for a retry or DLQ record; keeps the incoming trace context and user headers."""
    stack = format_exception(exc)
    out: list[tuple[str, bytes]] = [
        (k, v) for k, v in incoming.items() if not k.startswith(PREFIX)
    ]
    out += [
        (ATTEMPTS, str(attempts).encode()),
        (FAILED_AT_MS, str(now_ms).encode()),
        (REASON, reason.encode()),
        (TOPOLOGY, topology.encode()),
        (HANDLER, handler.encode()),
        (GROUP, group.encode()),
        (EXC_CLASS, f"{type(exc).__module__}.{type(exc).__qualname__}".encode()),
        (EXC_MESSAGE, truncated(str(exc), MAX_MESSAGE_BYTES)),
        (EXC_STACK, truncated(stack, MAX_STACK_BYTES)),
        (ORIG_TOPIC, origin.topic.encode()),
        (ORIG_PARTITION, str(origin.partition).encode()),
        (ORIG_OFFSET, str(origin.offset).encode()),
        (ORIG_TIMESTAMP_MS, str(origin.timestamp_ms).encode()),
    ]
    if event_id is not None:
        out.append((EVENT_ID, event_id.encode()))
    if due_ms is not None:
        out.append((DUE_AT_MS, str(due_ms).encode()))
    return out
