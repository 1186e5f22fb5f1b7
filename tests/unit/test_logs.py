"""processor.observability.logs: JSON and console lines, event context, trace ids, redaction."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from mode.utils.logging import redirect_stdouts
from opentelemetry.sdk.trace import TracerProvider

from processor.observability.logs import (
    QUIET_LOGGERS,
    REDACTED,
    configure_logging,
    event_context,
    event_fields,
    redact,
    trace_id_of,
)

log = logging.getLogger("tests.logs")
RFC3339_MS_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """configure_logging changes the root logger: undo it so other tests see pytest's own setup."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, value in quiet.items():
        logging.getLogger(name).setLevel(value)
    logging.captureWarnings(False)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    out = []
    for line in stream.getvalue().splitlines():
        loaded = orjson.loads(line)
        assert isinstance(loaded, dict)
        out.append(loaded)
    return out


def _json_stream(level: str = "DEBUG") -> io.StringIO:
    stream = io.StringIO()
    configure_logging(level, stream=stream)
    return stream


def test_json_line_has_the_base_fields_and_extras() -> None:
    stream = _json_stream("INFO")
    log.debug("below the level")
    log.info("hello %s", "world", extra={"count": 3, "tags": ["a", "b"]})
    [line] = _lines(stream)
    assert list(line)[:4] == ["time", "level", "logger", "message"]
    assert RFC3339_MS_UTC.fullmatch(line["time"])
    assert line["level"] == "INFO"
    assert line["logger"] == "tests.logs"
    assert line["message"] == "hello world"
    assert line["count"] == 3
    assert line["tags"] == ["a", "b"]
    assert "trace_id" not in line
    assert "exc_info" not in line


def test_extras_that_json_cannot_encode_are_left_out_not_the_line() -> None:
    stream = _json_stream()
    log.info("mixed", extra={"ok": {"n": 1}, "opaque": object(), "event_id": "e1"})
    log.info("bad text \udcff here")
    first, second = _lines(stream)
    assert first["ok"] == {"n": 1}
    assert first["event_id"] == "e1"
    assert "opaque" not in first
    assert second["message"].startswith("bad text ")


def test_extras_cannot_overwrite_the_base_fields() -> None:
    stream = _json_stream()
    log.info("real", extra={"level": "FAKE", "time": "then", "logger": "other"})
    [line] = _lines(stream)
    assert (line["level"], line["logger"], line["message"]) == ("INFO", "tests.logs", "real")
    assert RFC3339_MS_UTC.fullmatch(line["time"])


def test_exceptions_are_serialised() -> None:
    stream = _json_stream()
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("handler failed", extra={"event_id": "e9"})
    [line] = _lines(stream)
    assert line["level"] == "ERROR"
    assert line["exc_info"].startswith("Traceback (most recent call last):")
    assert line["exc_info"].rstrip().endswith("ValueError: boom")
    assert line["event_id"] == "e9"


def test_json_unless_the_stream_is_a_terminal() -> None:
    pipe, tty = io.StringIO(), _Tty()
    configure_logging("INFO", stream=pipe)
    log.info("to a pipe")
    configure_logging("INFO", stream=tty)
    log.info("to a terminal")
    configure_logging("INFO", stream=tty, json_lines=True)
    log.info("forced json")
    assert orjson.loads(pipe.getvalue())["message"] == "to a pipe"
    console, forced = tty.getvalue().splitlines()
    assert re.fullmatch(r"\d\d:\d\d:\d\d INFO     tests\.logs: to a terminal", console)
    assert orjson.loads(forced)["message"] == "forced json"


def test_console_line_shows_fields_as_key_value_and_the_traceback() -> None:
    stream = _Tty()
    configure_logging("DEBUG", stream=stream)
    with event_context(handler="charge", partition=2, event_id="e1"):
        try:
            raise RuntimeError("down")
        except RuntimeError:
            log.warning("retrying", extra={"reason": "gateway down"}, exc_info=True)
    first, *rest = stream.getvalue().splitlines()
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d WARNING  tests\.logs: retrying "
        r'\[handler=charge partition=2 event_id=e1 reason="gateway down"\]',
        first,
    )
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "RuntimeError: down"


def test_configure_replaces_its_own_handler_only() -> None:
    root = logging.getLogger()
    other = logging.NullHandler()
    root.addHandler(other)
    first = configure_logging("INFO", stream=io.StringIO())
    second_stream = io.StringIO()
    second = configure_logging("WARNING", stream=second_stream)
    assert second in root.handlers
    assert first not in root.handlers
    assert other in root.handlers
    assert root.level == logging.WARNING
    log.info("filtered")
    log.warning("kept")
    assert [line["message"] for line in _lines(second_stream)] == ["kept"]


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("LOUD", stream=io.StringIO())


def test_chatty_libraries_stay_at_info_when_debug_is_asked() -> None:
    configure_logging("debug", stream=io.StringIO())
    assert logging.getLogger("aiokafka").getEffectiveLevel() == logging.INFO
    assert logging.getLogger("processor").getEffectiveLevel() == logging.DEBUG
    configure_logging("ERROR", stream=io.StringIO())
    assert logging.getLogger("aiokafka").getEffectiveLevel() == logging.ERROR


def test_library_records_and_warnings_use_the_same_formatter() -> None:
    stream = _json_stream("INFO")
    logging.getLogger("aiokafka.consumer").debug("fetch chatter")
    logging.getLogger("aiokafka.consumer.group_coordinator").info("joined group")
    logging.getLogger("faust.worker").info("ready")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("old api", DeprecationWarning, stacklevel=1)
    lines = _lines(stream)
    assert [(line["logger"], line["level"]) for line in lines] == [
        ("aiokafka.consumer.group_coordinator", "INFO"), ("faust.worker", "INFO"), ("py.warnings", "WARNING"),
    ]
    assert "old api" in lines[2]["message"]


def test_prints_redirected_by_the_faust_worker_become_records_not_raw_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    # The worker wraps its run in mode's redirect_stdouts: sys.stdout becomes a proxy that logs. The handler
    # bound the real stream when it was configured, so the records reach it instead of looping back.
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stdout", stream)
    monkeypatch.setattr(sys, "stderr", sys.stderr)  # redirect_stdouts leaves sys.__stderr__: put pytest's back
    configure_logging("INFO")  # the default stream: the stdout of the moment
    with redirect_stdouts(severity="WARNING"), event_context(event_id="e1"):
        print("stray print from a handler")
        print("to stderr", file=sys.stderr)
    printed, to_stderr = _lines(stream)
    assert (printed["logger"], printed["level"], printed["message"]) == (
        "mode.redirect", "WARNING", "stray print from a handler",
    )
    assert printed["event_id"] == "e1"
    assert to_stderr["message"] == "to stderr"


# -- event context ---------------------------------------------------------------------------------------


def test_event_context_nests_merges_and_unwinds() -> None:
    stream = _json_stream()
    with event_context(topology="orders", handler="charge"):
        log.info("outer")
        with event_context(topic="orders", partition=1, offset=42, event_id="e1", trace_id=None):
            log.info("inner")
            with event_context(handler="refund"):
                log.info("innermost")
        log.info("outer again")
    log.info("outside")
    assert event_fields() == {}
    outer, inner, innermost, again, outside = _lines(stream)
    context_keys = ("topology", "handler", "topic", "partition", "offset", "event_id", "trace_id")
    assert {k: outer[k] for k in context_keys if k in outer} == {"topology": "orders", "handler": "charge"}
    assert {k: inner[k] for k in context_keys if k in inner} == {
        "topology": "orders", "handler": "charge", "topic": "orders", "partition": 1, "offset": 42, "event_id": "e1",
    }
    assert innermost["handler"] == "refund"
    assert innermost["event_id"] == "e1"
    assert {k: again[k] for k in context_keys if k in again} == {"topology": "orders", "handler": "charge"}
    assert not any(k in outside for k in context_keys)


def test_event_context_unwinds_on_exceptions() -> None:
    with pytest.raises(KeyError), event_context(event_id="e1"):
        raise KeyError("x")
    assert event_fields() == {}


async def test_event_context_is_isolated_across_asyncio_tasks() -> None:
    stream = _json_stream()
    both_inside = asyncio.Barrier(2)

    async def handle(event_id: str) -> None:
        with event_context(handler="h", event_id=event_id):
            log.info("start")
            await both_inside.wait()  # the two contexts are open at once
            await asyncio.sleep(0)
            log.info("end")

    with event_context(topology="orders"):  # inherited by both tasks
        await asyncio.gather(handle("e1"), handle("e2"))
        log.info("after")
    lines = _lines(stream)
    assert sorted((line["event_id"], line["message"]) for line in lines[:4]) == [
        ("e1", "end"), ("e1", "start"), ("e2", "end"), ("e2", "start"),
    ]
    assert all(line["topology"] == "orders" for line in lines)
    assert "event_id" not in lines[4]


# -- trace ids -------------------------------------------------------------------------------------------


def test_trace_and_span_ids_of_the_current_span() -> None:
    stream = _json_stream()
    tracer = TracerProvider().get_tracer("tests")
    with tracer.start_as_current_span("process orders") as span:
        log.info("inside")
        with tracer.start_as_current_span("send out") as child:
            log.info("child")
    log.info("outside")
    inside, in_child, outside = _lines(stream)
    ctx, child_ctx = span.get_span_context(), child.get_span_context()
    assert inside["trace_id"] == format(ctx.trace_id, "032x")
    assert inside["span_id"] == format(ctx.span_id, "016x")
    assert re.fullmatch(r"[0-9a-f]{32}", inside["trace_id"])
    assert re.fullmatch(r"[0-9a-f]{16}", inside["span_id"])
    assert in_child["trace_id"] == inside["trace_id"]
    assert in_child["span_id"] == format(child_ctx.span_id, "016x")
    assert "trace_id" not in outside
    assert "span_id" not in outside


def test_a_traceparent_field_is_logged_as_its_trace_id() -> None:
    stream = _json_stream()
    with event_context(event_id="e1", traceparent=TRACEPARENT):
        log.info("valid")
        with event_context(traceparent=b"not a traceparent"):
            log.info("invalid inside")  # the outer context's trace id stays
    with event_context(event_id="e2", traceparent=b"00-" + b"0" * 32 + b"-b7ad6b7169203331-01"):
        log.info("all zero")
    valid, invalid, zero = _lines(stream)
    assert valid["trace_id"] == invalid["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert "traceparent" not in valid
    assert "trace_id" not in zero
    assert event_fields() == {}


def test_trace_id_from_the_record_header_when_no_span_is_active() -> None:
    stream = _json_stream()
    tracer = TracerProvider().get_tracer("tests")
    with event_context(event_id="e1", trace_id=trace_id_of({"traceparent": TRACEPARENT})):
        log.info("tracing off")
        with tracer.start_as_current_span("process") as span:
            log.info("tracing on")
    off, on = _lines(stream)
    assert off["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert "span_id" not in off
    assert on["trace_id"] == format(span.get_span_context().trace_id, "032x")  # the live span wins
    assert on["span_id"] == format(span.get_span_context().span_id, "016x")


@pytest.mark.parametrize("value", [b"", b"garbage", b"00-" + b"0" * 32 + b"-b7ad6b7169203331-01",
                                   b"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01"])
def test_trace_id_of_a_missing_or_malformed_header_is_none(value: bytes) -> None:
    assert trace_id_of({"traceparent": value} if value else {}) is None


# -- redaction -------------------------------------------------------------------------------------------


def test_redact_masks_named_fields_at_any_depth_without_touching_the_event() -> None:
    event = {
        "order_id": "o1",
        "card": "4111111111111111",
        "customer": {"name": "Ada", "email": "ada@example.com", "address": {"email": "x@y", "city": "Paris"}},
        "items": [{"sku": "s1", "card": "c"}, "plain", ["nested", {"email": "z@z"}]],
        "amount": 12.5,
    }
    masked = redact(event, ("card", "email"))
    assert masked == {
        "order_id": "o1",
        "card": REDACTED,
        "customer": {"name": "Ada", "email": REDACTED, "address": {"email": REDACTED, "city": "Paris"}},
        "items": [{"sku": "s1", "card": REDACTED}, "plain", ["nested", {"email": REDACTED}]],
        "amount": 12.5,
    }
    assert event["card"] == "4111111111111111"
    assert event["customer"]["email"] == "ada@example.com"  # type: ignore[index]
    assert redact(event, ()) == event


def test_a_redacted_event_logged_as_extra_shows_no_secret() -> None:
    stream = _json_stream()
    event = {"event_id": "e1", "customer": {"email": "ada@example.com"}}
    log.warning("dead-lettered", extra={"event": redact(event, {"email"})})
    [line] = _lines(stream)
    assert line["event"] == {"event_id": "e1", "customer": {"email": REDACTED}}
    assert "ada@example.com" not in stream.getvalue()
