"""One trace follows an event: producer -> process (fails) -> send retry -> process (linked to the failed
attempt) -> send output. The pipeline runs against the real Redis; the Kafka hop between the two attempts
is the record the first attempt produced, handed to the second as the retry consumer would receive it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from processor.observability.metrics import Metrics
from processor.observability.tracing import Tracing
from processor.runtime.decode import Decoder
from processor.runtime.dedup import Dedup
from processor.runtime.pipeline import Pipeline
from processor.runtime.records import DeliveryError, InRecord, OutRecord
from processor.runtime.scope import HandlerScope
from processor.topology.retry import Retry
from processor.topology.topology import Context, Output, Topology
from tests.conftest import Backend


class Sink:
    """The transport seam: keeps what the pipeline produced, as the broker would."""

    def __init__(self) -> None:
        self.records: list[OutRecord] = []

    async def send(self, records: Sequence[OutRecord]) -> list[DeliveryError | None]:
        self.records += records
        return [None] * len(records)


def pipeline_of(topology: Topology, client: aioredis.Redis, tracing: Tracing, sink: Sink | None = None,
                metrics: Metrics | None = None) -> Pipeline:
    """The pipeline of the topology's only handler, on the real Redis ``client``."""
    spec = topology.handlers[0]
    group = topology.group(spec.name)
    return Pipeline(
        HandlerScope(topology.name, spec, group, metrics or Metrics(), tracing),
        decoder=Decoder(None, "event_id", 10_000),
        dedup=Dedup(client, group=group, owner="t", lease_seconds=5, ttl_seconds=60), sink=sink or Sink(),
    )


def idle_topology(name: str) -> Topology:
    """One handler that produces nothing."""
    topology = Topology(name)

    @topology.handler(source=f"{name}.in", outputs=())
    async def work(event: dict[str, Any], ctx: Context) -> None:
        return None

    return topology


def consumed(out: OutRecord, offset: int) -> InRecord:
    return InRecord(out.topic, 0, offset, 1_700_000_000_000, out.key, out.value, dict(out.headers))


async def test_fail_once_then_succeed_is_one_linked_trace(backend: Backend, unique: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider)
    topology = Topology(unique)
    calls: list[int] = []

    @topology.handler(source=f"{unique}.in", retry=Retry(delays=("1s",)), outputs=(f"{unique}.out",))
    async def work(event: dict[str, Any], ctx: Context) -> list[Output]:
        calls.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        return [Output(f"{unique}.out", {"event_id": ctx.event_id})]

    spec = topology.handlers[0]
    client = aioredis.Redis.from_url(backend.redis_url)
    sink = Sink()
    pipeline = pipeline_of(topology, client, tracing, sink=sink)
    # "Another client" produced the event inside its own trace.
    with provider.get_tracer("producer-app").start_as_current_span(f"send {unique}.in", kind=SpanKind.PRODUCER) as p:
        producer_ctx = p.get_span_context()
        headers = Tracing.headers_of(p)
    source = InRecord(f"{unique}.in", 0, 7, 1_700_000_000_000, b"k1", orjson.dumps({"event_id": "e1"}),
                      dict(headers))

    await pipeline.run([source])
    retry = [r for r in sink.records if r.topic == spec.retry_topics[0]]
    assert len(retry) == 1
    await pipeline.run([consumed(retry[0], 0)])
    await client.aclose()
    assert calls == [1, 2]
    output = [r for r in sink.records if r.topic == f"{unique}.out"]
    assert len(output) == 1

    spans = exporter.get_finished_spans()
    assert {s.context.trace_id for s in spans} == {producer_ctx.trace_id}, "everything is one trace"
    by_name: dict[str, list[Any]] = {}
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    first, = by_name[f"process {unique}.in"]
    second, = by_name[f"process {spec.retry_topics[0]}"]
    retry_send, = by_name[f"send {spec.retry_topics[0]}"]
    output_send, = by_name[f"send {unique}.out"]

    assert first.parent is not None
    assert first.parent.span_id == producer_ctx.span_id
    assert first.status.status_code is StatusCode.ERROR
    assert any(e.name == "exception" for e in first.events)
    assert retry_send.parent is not None
    assert retry_send.parent.span_id == first.context.span_id
    assert second.parent is not None
    assert second.parent.span_id == retry_send.context.span_id
    assert [link.context.span_id for link in second.links] == [first.context.span_id]
    assert output_send.parent is not None
    assert output_send.parent.span_id == second.context.span_id
    assert first.kind is SpanKind.CONSUMER
    assert retry_send.kind is SpanKind.PRODUCER

    attrs = first.attributes or {}
    assert attrs["messaging.system"] == "kafka"
    assert attrs["messaging.destination.name"] == f"{unique}.in"
    assert attrs["messaging.consumer.group.name"] == topology.group(spec.name)
    assert attrs["messaging.destination.partition.id"] == "0"
    assert attrs["messaging.kafka.offset"] == 7
    assert attrs["messaging.kafka.message.key"] == "k1"
    assert attrs["messaging.operation.name"] == "process"
    assert (retry_send.attributes or {})["processor.retry.tier"] == "1s"
    assert (second.attributes or {})["processor.retry.tier"] == "1s"
    assert (output_send.attributes or {})["messaging.operation.name"] == "send"
    # The output carries the send span's context, so its consumer continues this trace too.
    out_headers = dict(output[0].headers)
    assert out_headers["traceparent"].decode().split("-")[1] == format(producer_ctx.trace_id, "032x")
    assert out_headers["traceparent"].decode().split("-")[2] == format(output_send.context.span_id, "016x")


async def test_duplicates_are_traced_as_skips(backend: Backend, unique: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    topology = idle_topology(unique)
    client = aioredis.Redis.from_url(backend.redis_url)
    pipeline = pipeline_of(topology, client, Tracing(provider))
    record = InRecord(f"{unique}.in", 0, 1, 1_700_000_000_000, None, orjson.dumps({"event_id": "d1"}), {})
    await pipeline.run([record])
    await pipeline.run([record])
    await client.aclose()
    skipped = [s for s in exporter.get_finished_spans() if (s.attributes or {}).get("processor.dedup.outcome")]
    assert len(skipped) == 1
    assert (skipped[0].attributes or {})["processor.dedup.outcome"] == "duplicate"


async def test_processing_histogram_carries_trace_id_exemplars(backend: Backend, unique: str) -> None:
    from prometheus_client.openmetrics.exposition import generate_latest as openmetrics

    provider = TracerProvider()
    topology = idle_topology(unique)
    client = aioredis.Redis.from_url(backend.redis_url)
    metrics = Metrics()
    pipeline = pipeline_of(topology, client, Tracing(provider), metrics=metrics)
    await pipeline.run([InRecord(f"{unique}.in", 0, 1, 1_700_000_000_000, None, orjson.dumps({"event_id": "x"}), {})])
    await client.aclose()
    text = openmetrics(metrics.registry).decode()
    buckets = [line for line in text.splitlines() if line.startswith("processor_processing_seconds_bucket")]
    lines = [line for line in buckets if "#" in line]
    assert lines, "no exemplar in the OpenMetrics exposition"
    assert 'trace_id="' in lines[0]


async def test_an_unsampled_event_records_no_span_and_passes_its_trace_on_unsampled(
    backend: Backend, unique: str
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()  # parent-based: an upstream "not sampled" decides for the whole trace
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    topology = Topology(unique)

    @topology.handler(source=f"{unique}.in", outputs=(f"{unique}.out",))
    async def work(event: dict[str, Any], ctx: Context) -> list[Output]:
        return [Output(f"{unique}.out", {"event_id": ctx.event_id})]

    client = aioredis.Redis.from_url(backend.redis_url)
    sink = Sink()
    pipeline = pipeline_of(topology, client, Tracing(provider), sink=sink)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    upstream = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-00".encode()}
    await pipeline.run([InRecord(f"{unique}.in", 0, 1, 1_700_000_000_000, None,
                                 orjson.dumps({"event_id": "u1"}), upstream)])
    await client.aclose()
    assert exporter.get_finished_spans() == ()
    output, = sink.records
    _, out_trace, _, flags = dict(output.headers)["traceparent"].decode().split("-")
    assert (out_trace, flags) == (trace_id, "00"), "consumers downstream continue the same unsampled trace"
