"""The Faust side: one Faust app (one consumer group) per handler, all run by one worker process.

A handler's app subscribes to its source topic and its retry tiers; its consumer (processor.kafka.consumer)
hands every fetched batch to the partition queues, which run the pipeline and ack the offsets afterwards.
Each handler is its own consumer group so that fan-out handlers progress, pause and commit independently:
one handler's open breaker or backlog never holds back another's.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import ssl
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import faust
import mode
import redis.asyncio as aioredis
from faust.types import TP
from mode.utils.logging import redirect_stdouts

from processor.config import Settings
from processor.kafka.consumer import BatchConsumer, BatchTransport
from processor.kafka.producer import DeliveringProducer, ensure_topics
from processor.observability import loop_lag
from processor.observability.metrics import Metrics
from processor.observability.monitor import HandlerLatency, Monitor
from processor.observability.tracing import Tracing, build_tracing
from processor.runtime import heap, redis_client
from processor.runtime.breaker import Breaker
from processor.runtime.decode import Decoder, compile_schema
from processor.runtime.dedup import Dedup
from processor.runtime.partitions import PartitionQueues
from processor.runtime.pipeline import InRecord, Pipeline
from processor.topology.topology import HandlerSpec, Topology

log = logging.getLogger(__name__)

# Measured on the embedded broker: the group join is as slow as the session timeout allows (see README,
# "Worker start-up"). 10 s with a 1 s heartbeat keeps failure detection fast and safe on real Kafka too.
FAUST_SETTINGS: Mapping[str, Any] = {
    "value_serializer": "raw",
    "key_serializer": "raw",
    "web_enabled": False,
    "topic_disable_leader": True,
    "stream_wait_empty": False,  # the partition queues ack; held retry records must not block a rebalance
    "consumer_auto_offset_reset": "earliest",
    "broker_session_timeout": 10.0,
    "broker_heartbeat_interval": 1.0,
    "broker_commit_interval": 1.0,
    "autodiscover": False,
    "store": "memory://",
}
# The garbage collector's first threshold in a worker (see Worker.run).
GC_YOUNG_THRESHOLD = 20_000


@dataclass
class Runtime:
    """What every handler of one worker process shares."""

    settings: Settings
    metrics: Metrics
    producer: DeliveringProducer
    redis: aioredis.Redis
    breakers: dict[str, Breaker]
    dependencies: dict[str, Any]
    owner: str
    latency: dict[str, HandlerLatency]
    tracing: Tracing


def faust_credentials(settings: Settings) -> Any:
    """Kafka security settings in Faust's spelling (None for PLAINTEXT)."""
    protocol = settings.kafka_security_protocol
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=settings.kafka_ssl_ca_location)
    if protocol.startswith("SASL_"):
        password = settings.kafka_sasl_password.reveal() if settings.kafka_sasl_password else None
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username, password=password, ssl_context=context,
            mechanism=settings.kafka_sasl_mechanism,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def on_stop(app: faust.App, callback: Callable[[], Awaitable[None]]) -> None:
    """Run ``callback`` on a graceful stop of ``app``, before its consumer's final commit."""

    async def attach() -> None:
        await app.add_runtime_dependency(_OnStop(callback))

    app.task(attach)


def _records(batch: Sequence[Any]) -> list[InRecord]:
    """aiokafka's ConsumerRecords as InRecords."""
    return [
        InRecord(
            topic=r.topic, partition=r.partition, offset=r.offset, timestamp_ms=r.timestamp or 0, key=r.key,
            value=r.value, headers=dict(r.headers) if r.headers else {},
        )
        for r in batch
    ]


def _tp(tp: Any) -> TP:
    # Faust asserts its own TP type in its active set; messages may carry aiokafka's.
    return TP(tp.topic, tp.partition)


async def _trim_heap() -> None:
    await asyncio.to_thread(heap.trim)


class _OnStop(mode.Service):
    """Runs ``callback`` when its app stops, before the consumer does (it is the app's last child): so
    in-flight batches finish and their acks make the consumer's final commit on a graceful shutdown."""

    def __init__(self, callback: Callable[[], Awaitable[None]]) -> None:
        super().__init__()
        self._callback = callback

    async def on_stop(self) -> None:
        await self._callback()


class _Together(mode.Service):
    """Starts (and stops) several apps at once. Started one after another, each app waits out its own
    group join (about 6 s on the embedded broker) before the next begins."""

    def __init__(self, apps: list[faust.App]) -> None:
        super().__init__()
        self._apps = apps

    async def on_start(self) -> None:
        await asyncio.gather(*(app.maybe_start() for app in self._apps))

    async def on_stop(self) -> None:
        await asyncio.gather(*(app.stop() for app in self._apps))


class _Fetching:
    """Pauses and resumes partitions at a Faust app's consumer."""

    def __init__(self, app: faust.App) -> None:
        self._app = app
        self._tasks: set[asyncio.Task[None]] = set()

    def pause(self, tp: Any) -> None:
        self._app.consumer.pause_partitions({_tp(tp)})

    def resume(self, tp: Any, next_offset: int) -> None:
        task = asyncio.get_running_loop().create_task(self._seek_and_resume(_tp(tp), next_offset))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _seek_and_resume(self, tp: TP, next_offset: int) -> None:
        # Faust drops fetched records of a partition paused mid-batch: fetch again from what we expect.
        if next_offset >= 0:
            await self._app.consumer.seek(tp, next_offset)
        self._app.consumer.resume_partitions({tp})


def build_handler_app(topology: Topology, spec: HandlerSpec, runtime: Runtime) -> faust.App:
    """A Faust app running one handler over its source topic and retry tiers."""
    settings = runtime.settings
    group = topology.group(spec.name)
    app = faust.App(
        group, broker=f"kafka://{settings.kafka_bootstrap_servers}",
        broker_credentials=faust_credentials(settings), **FAUST_SETTINGS,
    )
    app.transport = BatchTransport(
        app.conf.broker_consumer, app, sink=lambda tp, batch: queues.put(tp, _records(batch)),
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
    )
    validator = compile_schema(topology.schemas_dir, spec.schema) if spec.schema else None
    metrics = runtime.metrics
    metrics.declare_handler(topology.name, spec.name)
    dedup = Dedup(
        runtime.redis, group=group, owner=runtime.owner,
        lease_seconds=topology.claim_lease_seconds, ttl_seconds=topology.dedup_ttl_seconds,
        on_dependency=lambda up: metrics.set_dependency_up("redis", up),
    )
    paused = metrics.paused_partitions
    fetching = _Fetching(app)
    queues: PartitionQueues[Any] = PartitionQueues(
        run=lambda records: pipeline.run(records),
        ack=lambda tp, records: cast(BatchConsumer, app.consumer).ack_offsets(tp, [r.offset for r in records]),
        pause=fetching.pause,
        resume=fetching.resume,
        on_pause_change=lambda reason, delta: paused.labels(topology.name, spec.name, reason).inc(delta),
        min_batch=spec.concurrency,
    )
    pipeline = Pipeline(
        topology.name, spec, group=group,
        decoder=Decoder(validator, spec.event_id, topology.max_event_bytes),
        dedup=dedup, sink=runtime.producer, metrics=metrics,
        breaker=runtime.breakers.get(spec.breaker) if spec.breaker else None,
        partitions=queues,
        dependencies=runtime.dependencies,
        observe=runtime.latency[spec.name].observe,
        tracing=runtime.tracing,
        redact=topology.redact,
        on_dependency=metrics.set_dependency_up,
    )
    app.topics.add(app.topic(spec.source, *spec.retry_topics, value_serializer="raw", key_serializer="raw"))

    on_stop(app, lambda: queues.drain(spec.timeout_seconds + 5))

    assigned = metrics.assigned_partitions.labels(topology.name, spec.name)

    async def on_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        queues.revoke(list(revoked))
        assigned.set(0)

    async def on_assigned(sender: Any, assigned_tps: Any, **kwargs: Any) -> None:
        assigned.set(len(assigned_tps))

    cast(Any, app.on_partitions_revoked).connect(on_revoked)
    cast(Any, app.on_partitions_assigned).connect(on_assigned)

    return app


class Worker:
    """Runs every handler of a topology in this process until SIGTERM/SIGINT."""

    def __init__(self, topology: Topology, settings: Settings, *, create_topics: bool = True) -> None:
        # Before any client starts a thread (processor.runtime.heap says why).
        if not heap.limit_arenas(settings.malloc_arena_max):
            log.info("not on glibc: the C heap's arenas are not limited, nor its free pages trimmed")
        self.topology = topology
        self.settings = settings
        self.create_topics = create_topics
        self.metrics = Metrics()
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        breakers = {
            name: Breaker(name, config, on_change=self.metrics.set_circuit_state)
            for name, config in topology.breakers.items()
        }
        for name in breakers:
            self.metrics.set_circuit_state(name, breakers[name].state)
        self.runtime = Runtime(
            settings=settings, metrics=self.metrics,
            producer=DeliveringProducer(settings, client_id=f"processor-{topology.name}"),
            redis=redis_client.connect(settings.redis_url.reveal(), socket_timeout=5, socket_connect_timeout=2),
            breakers=breakers, owner=owner,
            dependencies={name: factory(settings) for name, factory in topology.dependencies.items()},
            latency={spec.name: HandlerLatency() for spec in topology.handlers},
            tracing=build_tracing(settings),
        )
        self.metrics.set_dependency_up("redis", True)
        self.metrics.set_dependency_up("kafka", True)
        self.apps = [build_handler_app(topology, spec, self.runtime) for spec in topology.handlers]
        self.monitor = Monitor(topology, settings, self.metrics, self.runtime.redis, owner, self.runtime.latency)
        # The monitor is a timer of the first handler's app: it runs while the worker runs, whatever the
        # state of the consumer groups it measures.
        self.apps[0].timer(self.monitor.interval_seconds)(self.monitor.tick)
        self.apps[0].timer(heap.TRIM_INTERVAL_SECONDS)(_trim_heap)
        self.apps[0].task(self._watch_loop_lag)
        on_stop(self.apps[0], self.monitor.resign)

    async def _watch_loop_lag(self) -> None:
        await loop_lag.watch(self.metrics.event_loop_lag.labels(self.topology.name))

    def run(self) -> None:
        """Create the topics (unless told not to), serve /metrics, and run until stopped."""
        if self.create_topics:
            ensure_topics(
                self.settings, self.topology.topics(),
                self.topology.partitions or self.settings.topic_partitions,
                self.settings.topic_replication_factor,
            )
        self.metrics.serve(self.settings.metrics_host, self.settings.metrics_port)
        # The CLI configured logging (processor.observability.logs); mode must not replace it with its own handler.
        # faust.Worker starts its services before its app: _Together has every app running (the first one
        # too, which the worker then finds started) after one group join's time, not one per handler.
        worker = faust.Worker(self.apps[0], _Together(self.apps), loglevel=self.settings.log_level, quiet=True,
                              override_logging=False)
        worker.spinner = None  # at WARNING and above it writes terminal escapes into stdout, even a file
        # Everything alive now (modules, the apps, their clients) lives as long as the worker: out of the
        # collector's sight, a full collection scans only what came since. Scanning it all took 50-75 ms, about
        # once a second at 10k events/s (records waiting in queues survive into the oldest generation),
        # and every batch in the process stalls for it: the largest part of the bench's p99 latency.
        gc.collect()
        gc.freeze()
        # The youngest generation is collected once the tracked objects allocated outnumber those freed by
        # GC_YOUNG_THRESHOLD (CPython's default: 700). Almost all of ours die young by reference count, so
        # at 700 the collections (67 a second at 9k events/s, and a gen-1 collection every tenth, of up to
        # 11 ms) mostly rescanned the records in flight: 0.4 s of pauses in 12 s, against 7 ms at 20 000.
        gc.set_threshold(GC_YOUNG_THRESHOLD)
        try:
            with redirect_stdouts(severity="WARNING"):  # print() and stray stderr become log records
                worker.execute_from_commandline()
        finally:
            self.runtime.producer.close()
            self.runtime.tracing.shutdown()
