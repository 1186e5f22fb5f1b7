"""The produce step of a batch: every output, retry and dead letter sent, and sent again until the broker
has it or refuses it for good. A partition stalls rather than lose an event; an output the broker refuses
for good dead-letters its event instead."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from processor.errors import FatalError
from processor.runtime import headers as h
from processor.runtime.records import DeliveryError, OutRecord
from processor.runtime.routing import OUTPUT_REJECTED, Router
from processor.runtime.work import Work

log = logging.getLogger(__name__)

# What a retry or DLQ record too large to produce keeps of its value (its headers point at the original).
TRUNCATED_VALUE_BYTES = 64 * 1024


class Sink(Protocol):
    """Produces records and reports, per record, the broker's refusal (None: acknowledged)."""

    async def send(self, records: Sequence[OutRecord]) -> list[DeliveryError | None]: ...


class Delivery:
    """Produces a batch's records and waits for the broker's acknowledgements."""

    def __init__(self, sink: Sink, router: Router, on_dependency: Callable[[str, bool], None]) -> None:
        self._sink = sink
        self._router = router
        self._on_dependency = on_dependency

    async def deliver(self, works: list[Work], routed: list[OutRecord]) -> list[Work]:
        """Produce every output and routed record and wait for the broker; returns works whose outputs the
        broker refused for good (they are dead-lettered instead)."""
        owners: list[Work | None] = []
        records: list[OutRecord] = []
        for work in works:
            for out in work.outputs:
                owners.append(work)
                records.append(out)
        owners += [None] * len(routed)
        records += routed
        rejected: list[Work] = []
        wait = 0.1
        kafka_down = False
        while records:
            errors = await self._sink.send(records)
            next_owners: list[Work | None] = []
            next_records: list[OutRecord] = []
            transient = False
            for owner, record, error in zip(owners, records, errors, strict=True):
                if error is None:
                    continue
                if owner is None and error.too_large and not _is_truncated(record):
                    # A retry or DLQ record too large to produce (an oversized input plus our headers): keep
                    # the entry, with the value cut; its headers point at the original record.
                    next_owners.append(None)
                    next_records.append(_truncated(record))
                    continue
                if owner is not None and not error.retryable:
                    if all(owner is not r for r in rejected):
                        rejected.append(owner)
                        refused = FatalError(f"the broker refused an output to {record.topic}: {error.message}")
                        next_owners.append(None)
                        next_records.append(self._router.dead_letter(owner.record, owner.event_id, refused,
                                                                     OUTPUT_REJECTED))
                    continue
                # Transient (broker away, leader moving), or a retry/DLQ record that must not be lost:
                # send it again; the partition stalls rather than losing the event.
                log.warning("delivery to %s failed (%s); sending again", record.topic, error.message)
                transient = True
                next_owners.append(owner)
                next_records.append(record)
            if transient:
                kafka_down = True
                self._on_dependency("kafka", False)
                await asyncio.sleep(wait)
                wait = min(wait * 2, 5.0)
            owners, records = next_owners, next_records
        if kafka_down:
            self._on_dependency("kafka", True)
        return rejected


def _is_truncated(record: OutRecord) -> bool:
    return any(k == h.VALUE_TRUNCATED for k, _ in record.headers)


def _truncated(record: OutRecord) -> OutRecord:
    size = len(record.value or b"")
    value = (record.value or b"")[:TRUNCATED_VALUE_BYTES]
    return OutRecord(record.topic, value, record.key, [*record.headers, (h.VALUE_TRUNCATED, str(size).encode())])
