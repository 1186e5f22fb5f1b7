"""A real worker's log, written to a file (not a terminal): every line is a JSON object, Faust's and mode's
records included, and the lines about an event carry its id and the trace id of its ``traceparent``."""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import Backend
from tests.support import bed_worker, event, produce, read_topic

RFC3339_MS_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


class _OtlpSink(BaseHTTPRequestHandler):
    """Accepts OTLP/HTTP trace exports and counts them: a collector that is always up."""

    exports = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        type(self).exports += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def otlp_sink() -> Iterator[tuple[str, type[_OtlpSink]]]:
    sink = type("Sink", (_OtlpSink,), {"exports": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", sink
    finally:
        server.shutdown()
        server.server_close()


def _parse(log: str) -> list[dict[str, Any]]:
    lines = []
    for number, text in enumerate(log.splitlines(), 1):
        if not text.strip():
            continue
        try:
            line = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise AssertionError(f"log line {number} is not JSON: {text!r}") from None
        assert isinstance(line, dict), f"log line {number} is not an object: {text!r}"
        assert RFC3339_MS_UTC.fullmatch(line.get("time", "")), f"log line {number} has no RFC 3339 time: {text!r}"
        assert line.get("level") in LEVELS, f"log line {number} has no level: {text!r}"
        assert isinstance(line.get("message"), str), f"log line {number} has no message: {text!r}"
        lines.append(line)
    return lines


# WARNING: Faust's progress spinner is only on at WARNING and above, and must not write into the log.
@pytest.mark.parametrize(("level", "tracing"), [("DEBUG", "off"), ("DEBUG", "on"), ("WARNING", "off")])
def test_worker_log_is_json_lines_carrying_each_events_trace(
    backend: Backend, unique: str, tmp_path: Path, otlp_sink: tuple[str, type[_OtlpSink]], level: str, tracing: str
) -> None:
    # Every event fails its first attempt, so each is retried once (a WARNING) and then processed (a DEBUG).
    worker = bed_worker(backend.env(), unique, tmp_path, fail_attempts="1", retry="1s")
    worker.env["PROCESSOR_LOG_LEVEL"] = level
    endpoint, sink = otlp_sink
    if tracing == "on":
        worker.env.update(OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT=endpoint)
    else:
        worker.env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        worker.env["OTEL_TRACES_EXPORTER"] = "none"
    traces = {f"e{i}": secrets.token_hex(16) for i in range(3)}
    worker.start()
    try:
        worker.wait_assigned(["a"])
        for n, (event_id, trace_id) in enumerate(traces.items()):
            traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01".encode()
            produce(backend.bootstrap_servers, f"{unique}.in", [event(event_id, n)],
                    headers=[("traceparent", traceparent)])
        out = read_topic(backend.bootstrap_servers, f"{unique}.a.out", expect=len(traces), timeout=60)
        assert {m.json()["event_id"] for m in out} == set(traces), worker.tail()
    finally:
        worker.stop()

    lines = _parse(worker.log_path.read_text())
    loggers = {line.get("logger", "") for line in lines}
    if level == "DEBUG":
        assert any(name.startswith(("faust", "mode")) for name in loggers), f"no Faust/mode records among {loggers}"
    else:
        assert all(line["level"] in ("WARNING", "ERROR", "CRITICAL") for line in lines), "the level was not applied"
    for event_id, trace_id in traces.items():
        about = [line for line in lines if line.get("event_id") == event_id]
        assert about, f"no log line carries event_id {event_id}"
        assert all(line.get("trace_id") == trace_id for line in about), (event_id, trace_id, about)
        assert any(line["level"] == "WARNING" for line in about), f"no WARNING about the retry of {event_id}"
        assert all(line.get("topology") == unique and line.get("handler") == "a" for line in about), about
        if tracing == "on":
            assert any(re.fullmatch(r"[0-9a-f]{16}", line.get("span_id", "")) for line in about), about
    if tracing == "on":
        assert sink.exports > 0, "tracing was on but no span reached the collector"
