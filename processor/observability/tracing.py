"""OpenTelemetry tracing: one trace follows an event across topics, retry hops and the DLQ.

W3C ``traceparent``/``tracestate`` travel in Kafka record headers. A ``process <topic>`` span (kind
CONSUMER) continues the context of the record it handles; every record produced gets a ``send <topic>``
span (kind PRODUCER) under it, whose context the record carries on. A retried record also carries the
failed attempt's span (``x-processor-failed-span``), and the next attempt's span links to it. Spans use
the current messaging semantic conventions.

The exporter and sampler come from the standard ``OTEL_*`` variables (read by processor.config): OTLP
over HTTP, console, or none, the default when no endpoint is set. With none there is no provider at all,
and the pipeline skips every span call behind a single ``enabled`` check.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from processor.config import Settings

TRACE_HEADERS = ("traceparent", "tracestate")
FAILED_SPAN_HEADER = "x-processor-failed-span"
_PROPAGATOR = TraceContextTextMapPropagator()


class Tracing:
    """A tracer (or none) and the header codec; one per worker, passed to the pipeline."""

    def __init__(self, provider: TracerProvider | None) -> None:
        self.provider = provider
        self.enabled = provider is not None
        self.tracer: trace.Tracer = provider.get_tracer("processor") if provider else trace.NoOpTracer()

    def extract(self, headers: Mapping[str, bytes]) -> Context | None:
        """The trace context a record carries (None without a ``traceparent``)."""
        if "traceparent" not in headers:
            return None
        carrier = {k: headers[k].decode("latin-1") for k in TRACE_HEADERS if k in headers}
        return _PROPAGATOR.extract(carrier)

    def failed_attempt_link(self, headers: Mapping[str, bytes]) -> list[Link]:
        raw = headers.get(FAILED_SPAN_HEADER)
        if raw is None:
            return []
        span_context = trace.get_current_span(_PROPAGATOR.extract({"traceparent": raw.decode("latin-1")}))
        ctx = span_context.get_span_context()
        return [Link(ctx, {"processor.link": "failed_attempt"})] if ctx.is_valid else []

    @staticmethod
    def headers_of(span: Span) -> list[tuple[str, bytes]]:
        """``traceparent``/``tracestate`` headers that make ``span`` the parent of the record's consumer."""
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, trace.set_span_in_context(span))
        return [(k, v.encode("latin-1")) for k, v in carrier.items()]

    def start_process(
        self, topic: str, partition: int, offset: int, key: bytes | None, group: str,
        headers: Mapping[str, bytes], attributes: Mapping[str, str | int | bool],
    ) -> Span:
        """The ``process <topic>`` span of one record, continuing the context it carries."""
        return self.tracer.start_span(
            f"process {topic}", context=self.extract(headers), kind=SpanKind.CONSUMER,
            links=self.failed_attempt_link(headers),
            attributes={
                "messaging.system": "kafka", "messaging.operation.name": "process",
                "messaging.operation.type": "process", "messaging.destination.name": topic,
                "messaging.consumer.group.name": group, "messaging.destination.partition.id": str(partition),
                "messaging.kafka.offset": offset,
                **({"messaging.kafka.message.key": key.decode("utf-8", "replace")} if key else {}),
                **attributes,
            },
        )

    def start_send(self, parent: Span, topic: str, key: bytes | None,
                   attributes: Mapping[str, str | int | bool] | None = None) -> Span:
        """The ``send <topic>`` span of one produced record, a child of the span that produced it."""
        return self.tracer.start_span(
            f"send {topic}", context=trace.set_span_in_context(parent), kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "kafka", "messaging.operation.name": "send",
                "messaging.operation.type": "send", "messaging.destination.name": topic,
                **({"messaging.kafka.message.key": key.decode("utf-8", "replace")} if key else {}),
                **(attributes or {}),
            },
        )

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()


def record_failure(span: Span, exc: BaseException) -> None:
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


def with_trace_headers(headers: Sequence[tuple[str, bytes]], span: Span) -> list[tuple[str, bytes]]:
    """``headers`` with the trace context replaced by ``span``'s."""
    return [(k, v) for k, v in headers if k not in TRACE_HEADERS] + Tracing.headers_of(span)


def _sampler(settings: Settings) -> Sampler:
    ratio = TraceIdRatioBased(settings.otel_traces_sampler_arg)
    return {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": ratio,
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(ratio),
    }[settings.otel_traces_sampler]


def _exporter(settings: Settings) -> SpanExporter | None:
    if settings.traces_exporter == "console":
        return ConsoleSpanExporter(out=sys.stderr)
    if settings.traces_exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        headers = dict(
            pair.split("=", 1) for pair in settings.otel_exporter_otlp_headers.reveal().split(",") if "=" in pair
        ) if settings.otel_exporter_otlp_headers else None
        endpoint = settings.otel_exporter_otlp_endpoint
        return OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces" if endpoint else None, headers=headers)
    return None


def build_tracing(settings: Settings, exporter: SpanExporter | None = None) -> Tracing:
    """Tracing as the settings ask; ``exporter`` overrides them (tests pass an in-memory one)."""
    exporter = exporter or _exporter(settings)
    if exporter is None:
        return Tracing(None)
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.otel_service_name}), sampler=_sampler(settings)
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(provider)
