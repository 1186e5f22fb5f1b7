"""Structured logs: one JSON object per line (or a readable line on a terminal), carrying the event being
handled and its trace.

``configure_logging`` puts one handler on the root logger, so our records, Faust's, mode's and aiokafka's
all go through the same formatter. ``event_context`` tags every record logged inside it with the event's
topology, handler, topic, partition, offset and id (a context variable, so concurrent events in other
asyncio tasks keep their own). The trace and span ids come from the current OpenTelemetry span; without
one (tracing off), from a ``trace_id`` or ``traceparent`` given to ``event_context``, see ``trace_id_of``.
``redact`` masks configured fields before an event is logged.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import time
from collections.abc import Collection, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import IO, Any

import orjson
from opentelemetry import trace

REDACTED = "[REDACTED]"

#: Least severe level kept for chatty libraries, whatever level is asked for (a higher level wins). At DEBUG,
#: aiokafka logs every fetch and heartbeat and urllib3 (the OTLP exporter's HTTP) every connection: that
#: buries the processor's own DEBUG lines. Their INFO (group joins, assignments, retries) stays.
QUIET_LOGGERS: Mapping[str, int] = MappingProxyType({"aiokafka": logging.INFO, "urllib3": logging.INFO})

# Every attribute a bare LogRecord has: anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
_BASE_KEYS = ("time", "level", "logger", "message")
_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS
_TRACEPARENT = re.compile(rb"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")

_NO_FIELDS: Mapping[str, Any] = MappingProxyType({})


# -- event context ---------------------------------------------------------------------------------------


class _Fields:
    """One ``event_context``'s fields over those of the one around it, merged only when a record is logged.

    The worker enters a context for every event it handles and logs for few of them: merging on entry,
    with the trace id parsed from its header and the generator a ``contextmanager`` makes, cost 5.2 µs an
    event (about 6% of a worker's CPU per event at a fixed 6 000 events/s); entering this costs 1.4 µs."""

    __slots__ = ("_merged", "_outer", "_own")

    def __init__(self, outer: _Fields | None, own: dict[str, Any]) -> None:
        self._outer = outer
        self._own = own
        self._merged: Mapping[str, Any] | None = None

    def merged(self) -> Mapping[str, Any]:
        if self._merged is None:
            outer = self._outer.merged() if self._outer is not None else _NO_FIELDS
            own = {k: v for k, v in self._own.items() if v is not None and k != "traceparent"}
            traceparent = self._own.get("traceparent")
            trace_id = _trace_id_in(traceparent) if traceparent is not None else None
            if trace_id is not None:
                own.setdefault("trace_id", trace_id)
            self._merged = MappingProxyType({**outer, **own})
        return self._merged


_event: ContextVar[_Fields | None] = ContextVar("processor_log_event", default=None)


class _EventContext:
    __slots__ = ("_own", "_token")

    def __init__(self, own: dict[str, Any]) -> None:
        self._own = own

    def __enter__(self) -> None:
        self._token = _event.set(_Fields(_event.get(), self._own))

    def __exit__(self, *exc_info: object) -> None:
        _event.reset(self._token)


def event_context(**fields: Any) -> contextlib.AbstractContextManager[None]:
    """Tag every record logged inside with ``fields`` (None values are left out); nested contexts merge,
    the inner one winning. Each asyncio task sees only the contexts it entered (or inherited at creation).
    A ``traceparent`` field (a W3C header's value) is logged as the ``trace_id`` it holds (``trace_id_of``),
    read only when a record is logged."""
    return _EventContext(fields)


def event_fields() -> Mapping[str, Any]:
    """The fields of the innermost ``event_context`` (read-only; empty outside any)."""
    fields = _event.get()
    return fields.merged() if fields is not None else _NO_FIELDS


def trace_id_of(headers: Mapping[str, bytes]) -> str | None:
    """The trace id of a record's W3C ``traceparent`` header, or None. Pass it to ``event_context`` so the
    event's logs carry its trace even when tracing is off (a current span, when there is one, wins)."""
    return _trace_id_in(headers.get("traceparent", b""))


def _trace_id_in(traceparent: bytes) -> str | None:
    match = _TRACEPARENT.fullmatch(traceparent.strip())
    if match is None or match.group(1) == b"0" * 32:
        return None
    return match.group(1).decode()


def span_ids() -> dict[str, str]:
    """``trace_id`` and ``span_id`` (hex) of the current OpenTelemetry span, or nothing if it is invalid."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return {}
    return {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}


# -- redaction -------------------------------------------------------------------------------------------


def redact(event: Mapping[str, Any], fields: Collection[str]) -> dict[str, Any]:
    """A copy of ``event`` whose keys named in ``fields``, at any depth (in nested mappings and lists),
    have the value ``"[REDACTED]"``. Log ``extra={"event": redact(event, topology.redact)}``, never the
    raw event."""
    names = frozenset(fields)
    return {k: REDACTED if k in names else _redact_value(v, names) for k, v in event.items()}


def _redact_value(value: Any, names: frozenset[str]) -> Any:
    if isinstance(value, Mapping):
        return {k: REDACTED if k in names else _redact_value(v, names) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v, names) for v in value]
    return value


# -- formatters ------------------------------------------------------------------------------------------


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """What a record says beyond time, level, logger and message: event context, trace, ``extra=``."""
    fields = dict(event_fields())
    fields.update(span_ids())  # the live span is more precise than a trace id from a header
    for key, value in record.__dict__.items():
        if key not in _RECORD_ATTRIBUTES and key not in _BASE_KEYS and not key.startswith("_"):
            fields[key] = value
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (RFC 3339, UTC, ms), level, logger, message, the event context,
    trace and span ids, ``extra=`` fields, and ``exc_info``/``stack_info`` text."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            payload["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            payload["exc_info"] = record.exc_text
        if record.stack_info:
            payload["stack_info"] = self.formatStack(record.stack_info)
        return _dumps(payload)


def _dumps(payload: dict[str, Any]) -> str:
    try:
        return orjson.dumps(payload, option=_JSON_OPTIONS).decode()
    except TypeError:
        pass
    # Slow path, rare: drop the fields orjson cannot encode (an ``extra=`` object, a huge int) rather than the
    # line, and make text with lone surrogates (undecodable bytes) encodable.
    safe: dict[str, Any] = {}
    for key, value in payload.items():
        if isinstance(value, str):
            safe[key] = value.encode("utf-8", "replace").decode("utf-8")
        elif _encodable(value):
            safe[key] = value
    return orjson.dumps(safe, option=_JSON_OPTIONS).decode()


def _encodable(value: Any) -> bool:
    try:
        orjson.dumps(value, option=_JSON_OPTIONS)
    except TypeError:
        return False
    return True


class ConsoleFormatter(logging.Formatter):
    """``HH:MM:SS LEVEL logger: message [key=value ...]`` in local time, then any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{clock} {record.levelname:<8} {record.name}: {record.getMessage()}"
        pairs = " ".join(f"{k}={_console_value(v)}" for k, v in _fields(record).items())
        if pairs:
            line += f" [{pairs}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def _console_value(value: Any) -> str:
    if isinstance(value, str) and value and " " not in value and "=" not in value:
        return value
    try:
        return orjson.dumps(value, option=_JSON_OPTIONS).decode()
    except TypeError:
        return repr(value)


# -- setup -----------------------------------------------------------------------------------------------


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Our root handler; a type of its own so a second ``configure_logging`` finds and replaces it."""


def configure_logging(level: str, *, json_lines: bool | None = None, stream: IO[str] | None = None) -> logging.Handler:
    """Log ``level`` and above to ``stream`` (default: stdout) through one root handler, replacing the one an
    earlier call installed (other handlers stay). JSON lines when ``json_lines`` is True, or when it is None
    and the stream is not a terminal; a readable line otherwise. Returns the handler."""
    levels = logging.getLevelNamesMapping()
    if level.upper() not in levels:
        raise ValueError(f"unknown log level {level!r}")
    number = levels[level.upper()]
    # Bind the stream now: mode's worker later swaps sys.stdout for a proxy that logs, which must not
    # become our own output.
    out = sys.stdout if stream is None else stream
    if json_lines is None:
        json_lines = not _isatty(out)
    handler = _Handler(out)
    handler.setFormatter(JsonFormatter() if json_lines else ConsoleFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(number)
    for name, floor in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(max(number, floor))
    # Warnings would otherwise be printed raw to stderr, between the JSON lines.
    logging.captureWarnings(True)
    return handler


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False
