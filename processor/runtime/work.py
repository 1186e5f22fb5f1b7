"""One event of a batch on its way through the pipeline: its record, what decoding found, and what became
of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from opentelemetry.trace import Span

from processor.runtime.records import InRecord, OutRecord


@dataclass(slots=True, eq=False)
class Work:
    """Identity matters (``eq=False``): copies of one event are different works."""

    record: InRecord
    event: dict[str, Any]
    event_id: str
    outputs: list[OutRecord] = field(default_factory=list)
    error: BaseException | None = None
    started: float = 0.0  # when its handler call began (0: no call, its stored outputs were replayed)
    span: Span | None = None
