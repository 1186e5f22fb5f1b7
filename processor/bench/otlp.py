"""A stand-in OTLP/HTTP collector for the bench's traced variant (d): it counts the spans it receives and
discards them.

The worker exports as a user's would, OTLP protobuf over HTTP (processor.observability.tracing), so (d) pays for
encoding and sending its spans, not for printing them; the count says the spans were sent at all (an exporter that
cannot connect only logs, and a variant that exports nothing looks cheap). A real collector would run
beside the worker too, usually on the same node; this one does no work beyond decoding each request.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

_EMPTY_RESPONSE = ExportTraceServiceResponse().SerializeToString()


class Collector:
    """Where (d) sends its spans: ``endpoint`` for OTEL_EXPORTER_OTLP_ENDPOINT, ``spans`` received so far."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._lock = threading.Lock()
        self.spans = 0

    def received(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        count = sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)
        with self._lock:
            self.spans += count


@contextmanager
def otlp_collector() -> Iterator[Collector]:
    """A collector on a free loopback port for the length of a ``with`` block."""
    server = _Server(("127.0.0.1", 0), _Handler)
    host, port = server.server_address[:2]
    server.collector = collector = Collector(f"http://{host!s}:{port}")
    thread = threading.Thread(target=server.serve_forever, name="bench-otlp", daemon=True)
    thread.start()
    try:
        yield collector
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    collector: Collector


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the exporter's session expects

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path == "/v1/traces":
            cast(_Server, self.server).collector.received(body)
            self._reply(200, _EMPTY_RESPONSE)
        else:
            self._reply(404, b"")

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request on the bench's terminal otherwise
