"""The worker: the composition root. It builds, for each handler of a topology, the path of its events
(partition queues -> pipeline: decode, claims, handling, delivery, routing) on a Faust app of its own
(processor.kafka.faust_app), shares one producer, Redis client, breakers, metrics and tracing among them,
and runs them all, with the lag monitor, until SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from processor.config import Settings
from processor.kafka import lag
from processor.kafka.faust_app import HandlerApp, run_apps
from processor.kafka.producer import DeliveringProducer, ensure_topics
from processor.observability import loop_lag
from processor.observability.metrics import Metrics
from processor.observability.monitor import HandlerLatency, Monitor
from processor.observability.tracing import Tracing, build_tracing
from processor.runtime import heap, redis_client
from processor.runtime.breaker import Breaker
from processor.runtime.budget_policy import BudgetGovernor
from processor.runtime.decode import Decoder, compile_schema
from processor.runtime.dedup import Dedup
from processor.runtime.done_marks import CLUSTER_SHARDS
from processor.runtime.handling import Handling
from processor.runtime.partitions import PartitionQueues
from processor.runtime.pipeline import Pipeline
from processor.runtime.scope import HandlerScope, Levers
from processor.runtime.stall import StallWatch
from processor.topology.topology import HandlerSpec, Topology

log = logging.getLogger(__name__)

# The garbage collector's first threshold in a worker (see _prepare_heap).
GC_YOUNG_THRESHOLD = 20_000


@dataclass
class Runtime:
    """What every handler of one worker process shares."""

    settings: Settings
    metrics: Metrics
    producer: DeliveringProducer
    redis: redis_client.RedisClient
    breakers: dict[str, Breaker]
    dependencies: dict[str, Any]
    owner: str
    latency: dict[str, HandlerLatency]
    tracing: Tracing
    # Per handler, filled by build_handler: what a budget policy turns (processor.runtime.budget_policy).
    levers: dict[str, Levers] = field(default_factory=dict)
    partitions: dict[str, PartitionQueues[Any]] = field(default_factory=dict)


async def _trim_heap() -> None:
    await asyncio.to_thread(heap.trim)


def build_handler(topology: Topology, spec: HandlerSpec, runtime: Runtime) -> HandlerApp:
    """One handler's app, its partition queues and its pipeline, wired in the order an event meets them."""
    settings, metrics = runtime.settings, runtime.metrics
    group = topology.group(spec.name)
    app = HandlerApp(group, settings, (spec.source, *spec.retry_topics))
    metrics.declare_handler(topology.name, spec.name)
    scope = HandlerScope(topology.name, spec, group, metrics, runtime.tracing, tuple(topology.redact),
                         levers=runtime.levers.setdefault(spec.name, Levers()))
    validator = compile_schema(topology.schemas_dir, spec.schema) if spec.schema else None
    dedup = Dedup(
        runtime.redis, group=group, owner=runtime.owner,
        lease_seconds=topology.claim_lease_seconds, ttl_seconds=topology.dedup_ttl_seconds,
        peak_rate=topology.dedup_peak_rate,
        shards=CLUSTER_SHARDS if settings.redis_mode == "cluster" else 1,
        wait_replicas=settings.redis_wait_replicas, wait_timeout_ms=settings.redis_wait_timeout_ms,
        on_dependency=lambda up: metrics.set_dependency_up("redis", up),
    )
    handling = Handling(scope, breaker=runtime.breakers.get(spec.breaker) if spec.breaker else None,
                        dependencies=runtime.dependencies)
    pipeline = Pipeline(
        scope, decoder=Decoder(validator, spec.event_id, topology.max_event_bytes), dedup=dedup,
        sink=runtime.producer, handling=handling, observe=runtime.latency[spec.name].observe,
        on_dependency=metrics.set_dependency_up,
    )
    paused = metrics.paused_partitions
    queues: PartitionQueues[Any] = PartitionQueues(
        run=pipeline.run, ack=app.ack, pause=app.pause, resume=app.resume,
        on_pause_change=lambda reason, delta: paused.labels(topology.name, spec.name, reason).inc(delta),
        min_batch=spec.concurrency,
    )
    handling.pause_with(queues)  # an open breaker holds every partition of the handler
    runtime.partitions[spec.name] = queues
    watch = _stall_watch(app, queues, group, runtime.settings, metrics, topology.name, spec.name)
    app.task(watch.run_forever)
    app.on_stop(lambda: queues.drain(spec.timeout_seconds + 5))
    rebalances = metrics.rebalances.labels(topology.name, spec.name)

    def on_rebalanced() -> None:
        rebalances.inc()
        watch.reassigned()

    app.consume_into(queues, on_assigned=metrics.assigned_partitions.labels(topology.name, spec.name).set,
                     on_rebalanced=on_rebalanced)
    return app


def _stall_watch(app: HandlerApp, queues: PartitionQueues[Any], group: str, settings: Settings, metrics: Metrics,
                 topology: str, handler: str) -> StallWatch[Any]:
    async def records_beyond(tps: Sequence[Any]) -> dict[Any, int]:
        positions = {(tp.topic, tp.partition): getattr(queues.progress(tp), "next_offset", -1) for tp in tps}
        beyond = await asyncio.to_thread(lag.records_beyond, settings, group, positions, settings.stall_seconds)
        return {tp: beyond[(tp.topic, tp.partition)] for tp in tps if (tp.topic, tp.partition) in beyond}

    recoveries = metrics.stall_recoveries
    return StallWatch(
        assigned=app.assigned, progress=queues.progress, records_beyond=records_beyond, seek=app.resume,
        rejoin=app.rejoin, on_change=metrics.stalled_partitions.labels(topology, handler).set,
        on_recovery=lambda action: recoveries.labels(topology, handler, action).inc(), clock=time.time,
        stall_seconds=settings.stall_seconds,
    )


async def _failpoint_stall(app: HandlerApp, sticky: bool) -> None:
    # PROCESSOR_FAILPOINT_STALL (processor.config): a fault for the stalled-partition tests and chaos lab.
    while not app.assigned():  # noqa: ASYNC110 (the assignment sets no event we could wait on)
        await asyncio.sleep(0.5)
    await asyncio.sleep(5)
    log.warning("failpoint PROCESSOR_FAILPOINT_STALL: the fetch of %s stops (%s)", app.stall_fetch(sticky),
                "sticky" if sticky else "once")


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
            redis=redis_client.connect(settings.redis_url.reveal(), settings.redis_mode, socket_timeout=5,
                                       socket_connect_timeout=2),
            breakers=breakers, owner=owner,
            dependencies={name: factory(settings) for name, factory in topology.dependencies.items()},
            latency={spec.name: HandlerLatency() for spec in topology.handlers},
            tracing=build_tracing(settings),
        )
        self.metrics.set_dependency_up("redis", True)
        self.metrics.set_dependency_up("kafka", True)
        self.apps = [build_handler(topology, spec, self.runtime) for spec in topology.handlers]
        self.monitor = Monitor(topology, settings, self.metrics, self.runtime.redis, owner, self.runtime.latency)
        # The monitor is a timer of the first handler's app: it runs while the worker runs, whatever the
        # state of the consumer groups it measures.
        self.apps[0].every(self.monitor.interval_seconds, self.monitor.tick)
        self.apps[0].every(heap.TRIM_INTERVAL_SECONDS, _trim_heap)
        if settings.failpoint_stall is not None:
            sticky = settings.failpoint_stall == "sticky"
            self.apps[0].task(lambda: _failpoint_stall(self.apps[0], sticky))
        self.apps[0].task(self._watch_loop_lag)
        self.apps[0].on_stop(self.monitor.resign)
        if topology.budget_policies:
            governor = BudgetGovernor(topology, self.monitor.budget, self.runtime.levers, self.runtime.partitions,
                                      self.metrics, self.runtime.tracing)
            self.apps[0].every(self.monitor.interval_seconds, governor.run_tick)

    async def _watch_loop_lag(self) -> None:
        await loop_lag.watch(self.metrics.event_loop_lag.labels(self.topology.name))

    def run(self) -> None:
        """Create the topics (unless told not to), serve /metrics, and run until stopped."""
        redis_client.check_mode(self.settings.redis_url.reveal(), self.settings.redis_mode)
        if self.create_topics:
            ensure_topics(
                self.settings, self.topology.topics(),
                self.topology.partitions or self.settings.topic_partitions,
                self.settings.topic_replication_factor,
            )
        self.metrics.serve(self.settings.metrics_host, self.settings.metrics_port)
        try:
            run_apps(self.apps, self.settings.log_level, prepare=_prepare_heap)
        finally:
            self.runtime.producer.close()
            self.runtime.tracing.shutdown()


def _prepare_heap() -> None:
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
