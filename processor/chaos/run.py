"""Chaos experiments: running one. Its own stack, the monitor and the replicas, the recorder, the workload
and the fault; then every input waited for (bounded), lag waited down to 0 (bounded), and the ledgers
read, before every process is stopped. The verdict is ``processor.chaos.judge``'s.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from processor.chaos.faults import FaultContext
from processor.chaos.fleet import Fleet, wait_serving, wait_settled
from processor.chaos.judge import Outcome, failed, judge
from processor.chaos.model import Experiment, Observed
from processor.chaos.read import Ledger, TopicReader, read_ledgers
from processor.chaos.record import Recorder, Timeline
from processor.chaos.stack import Endpoints, Stack, external_endpoints
from processor.chaos.verify import Unit, account, account_effects, units_of
from processor.chaos.workload import Input, Workload, WorkloadSpec, build_inputs
from processor.config import Settings
from processor.dev.devstack import BrokerKind
from processor.errors import StackError
from processor.kafka.lag import read_lag
from processor.kafka.producer import client_config, ensure_topics, wait_for_topics
from processor.topology.topology import Topology, load_topology

SERVE_TIMEOUT_SECONDS = 30.0
SETTLE_TIMEOUT_SECONDS = 90.0
LAG_ZERO_TIMEOUT_SECONDS = 30.0
SETTLE_EXTRAS_SECONDS = 2.0  # after the last input is accounted for: a repeated output must not hide


@dataclass(frozen=True)
class RunOptions:
    """What the command line chooses for every experiment of a run."""

    topology: str = "topologies.orders"
    events: int | None = None
    duration: float | None = None
    report_dir: Path = Path(".processor/chaos")
    cwd: Path = field(default_factory=Path.cwd)
    broker: BrokerKind = "kafka"  # of each experiment's own stack
    brokers: int = 3
    # Servers to run against instead of a stack of the experiment's own (default: the environment's, if
    # KAFKA_BOOTSTRAP_SERVERS and REDIS_URL are both set).
    external: Endpoints | None = None


def run_experiment(exp: Experiment, options: RunOptions) -> Outcome:
    """Run ``exp`` and judge it; never raises for a failed experiment (the outcome says why)."""
    started = time.monotonic()
    run_id = f"{exp.name}-{uuid.uuid4().hex[:6]}"
    workdir = options.report_dir / exp.name
    shutil.rmtree(workdir, ignore_errors=True)  # our own directory from an earlier run
    workdir.mkdir(parents=True)
    timeline = Timeline()
    deadline = started + exp.time_limit
    try:
        topology = load_topology(exp.topology or options.topology)
        observed = _execute(exp, options, topology, run_id, workdir, timeline, deadline)
    except Exception as exc:  # any failure is this experiment's verdict, not the end of the whole run
        return failed(exp, run_id, f"{type(exc).__name__}: {exc}", timeline.snapshot(), workdir,
                      time.monotonic() - started)
    outcome = judge(exp, topology, observed, workdir, time.monotonic() - started)
    return dataclasses.replace(outcome, elapsed_seconds=round(time.monotonic() - started, 1))  # with the alert check


def _take_large_records(settings: Settings, topic: str) -> None:
    # Apache Kafka refuses a record above the topic's max.message.bytes (1 MiB by default) at produce time,
    # so an oversized input reaches a worker only from a topic that takes it: the worker, not the broker,
    # must be what refuses it here (the embedded broker takes anything).
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType  # type: ignore[attr-defined, unused-ignore]

    entry = ConfigEntry("max.message.bytes", str(LARGE_RECORD_BYTES), incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])
    admin = AdminClient(client_config(settings))  # held until the futures resolve: a dropped handle fails them
    for future in admin.incremental_alter_configs([resource]).values():
        future.result()


def _partitions(settings: Settings, topology: Topology) -> dict[str, int]:
    """Per handler, the partitions its consumer group reads (source and retry tiers), as they exist."""
    from confluent_kafka.admin import AdminClient

    # Metadata that has every topic: a broker that has not yet learnt of one would make it count 0.
    admin = AdminClient(client_config(settings))
    metadata = wait_for_topics(admin, topology.topics(), settings.kafka_bootstrap_servers)
    return {spec.name: sum(len(metadata[t].partitions) for t in (spec.source, *spec.retry_topics) if t in metadata)
            for spec in topology.handlers}


REPLICATED_EVENTS_PER_SECOND = 30
LARGE_RECORD_BYTES = 4_000_000  # the workload producer's message.max.bytes (processor.chaos.workload)


def _capped(events: int, duration: float, replication_factor: int, timeline: Timeline) -> int:
    # Measured on this 2-core machine: three brokers writing every record three times (acks=all), two
    # workers and the monitor saturate both cores at ~120 events/s (the brokers alone 90-135% CPU), and
    # p99 processing reaches 1.1-1.4 s: the latency SLO burns before any fault. At ~30/s (a cluster that
    # has run a while) p99 is 360 ms.
    # An experiment judges its fault, not the machine's capacity, so on a replicated cluster the load
    # keeps its duration and sheds events. `--events` overrides this.
    if replication_factor < 3:
        return events
    cap = int(REPLICATED_EVENTS_PER_SECOND * duration)
    if events > cap:
        timeline.note(f"load capped at {REPLICATED_EVENTS_PER_SECOND}/s on a replicated cluster: {cap} events, "
                      f"not {events}")
    return min(events, cap)


def _execute(exp: Experiment, options: RunOptions, topology: Topology, run_id: str, workdir: Path,
             timeline: Timeline, deadline: float) -> Observed:
    source = topology.handlers[0].source
    external = options.external or external_endpoints()
    with Stack(workdir, persistent_redis=exp.persistent_redis, external=external, broker=options.broker,
               brokers=options.brokers) as stack:
        timeline.note(f"stack: {stack.describe()}")
        endpoints = stack.endpoints
        duration = options.duration or exp.duration
        events = options.events or _capped(exp.events, duration, endpoints.replication_factor, timeline)
        spec = WorkloadSpec(events, duration, exp.duplicates, exp.poison, exp.oversized)
        settings = Settings.load(overrides=endpoints.env())
        ensure_topics(settings, topology.topics(), topology.partitions or settings.topic_partitions,
                      settings.topic_replication_factor)
        if exp.oversized:
            _take_large_records(settings, source)
        partitions = _partitions(settings, topology)
        env = {**endpoints.env(), **exp.worker_env, **exp.fault.worker_env}
        fleet = Fleet(exp.topology or options.topology, env, workdir, options.cwd)
        recorder = Recorder(fleet)
        topics = [t for h in topology.handlers for t in (*h.outputs, *h.retry_topics, h.dlq_topic)]
        reader = TopicReader(client_config(settings), dict.fromkeys(topics))

        def settle(timeout: float) -> float:
            return wait_settled(fleet, partitions, timeout)

        workload: Workload | None = None
        try:
            wait_serving(fleet.start_monitor(), min(SERVE_TIMEOUT_SECONDS, _left(deadline)))
            for _ in range(exp.replicas):
                fleet.start_replica()
            took = settle(min(SETTLE_TIMEOUT_SECONDS, _left(deadline)))
            timeline.note(f"{exp.replicas} replicas hold every partition, {took:.1f}s after their start")
            recorder.start()
            time.sleep(2.0)  # a little steady state on record before the load
            source_partitions = partitions[topology.handlers[0].name] // (1 + len(topology.handlers[0].retry_topics))
            inputs = build_inputs(run_id, spec, source_partitions)
            workload = Workload(client_config(settings), source, inputs, spec.duration_seconds).start()
            timeline.note(f"workload starts: {len(inputs)} records to {source} over {spec.duration_seconds:g}s")
            exp.fault.run(FaultContext(stack, fleet, timeline, workload, endpoints.redis_url, deadline, settle))
            if not workload.join(_left(deadline)):
                raise StackError("the workload did not finish producing in time")
            timeline.note(f"workload done: {workload.production.delivered} records acknowledged by the broker")
            units = units_of(inputs, workload.production.produced_at)
            drain_deadline = min(deadline, time.monotonic() + exp.drain_seconds)
            complete = _drain(reader, topology, units, run_id, drain_deadline)
            timeline.note("every input accounted for" if complete else
                          f"NOT every input accounted for {exp.drain_seconds:g}s after the workload")
            lag_zero = _wait_lag_zero(settings, topology, min(LAG_ZERO_TIMEOUT_SECONDS, _left(deadline))) \
                if complete else None
            if lag_zero is not None:
                timeline.note(f"every consumer group's lag is 0, {lag_zero:.1f}s later")
            recorder.stop()
            reader.catch_up(min(30.0, _left(deadline)))
            ledgers = read_ledgers(endpoints.redis_url, topology.name, run_id)
        finally:
            if workload is not None:
                workload.stop()
            recorder.stop()
            fleet.close()
            reader.close()
    accounts = [account(h, units, reader.records, run_id) for h in topology.handlers]
    effects = [account_effects(a.handler, ledgers.get(a.handler, Ledger({}, {})), a, exp.fault.crash)
               for a in accounts]
    series = recorder.series()
    stamps = [x.at for s in series for x in s.samples]
    return Observed(
        run_id=run_id, units=units, accounts=accounts, effects=effects, series=series,
        timeline=timeline.snapshot(), production=workload.production, load_started_at=workload.started_at,
        started_at=min(stamps, default=0.0),
        ended_at=max(stamps, default=0.0), expected_duplicates=_duplicates(inputs, workload.production.produced_at),
        lag_zero_seconds=lag_zero,
    )


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise StackError("the experiment ran out of time")
    return left


def _duplicates(inputs: Sequence[Input], produced_at: Mapping[str, float]) -> int:
    """Copies of an event id beyond its first: what dedup must skip."""
    with_id = [i.event_id for i in inputs if i.event_id is not None and i.input_id in produced_at]
    return len(with_id) - len(set(with_id))


def _drain(reader: TopicReader, topology: Topology, units: Mapping[str, Unit], run_id: str, deadline: float) -> bool:
    """Read the topics until every handler accounted for every unit (True) or the deadline (False); then a
    little longer, so that a repeated output cannot hide behind an early return."""
    while True:
        reader.catch_up(max(5.0, deadline - time.monotonic()))
        if all(not account(h, units, reader.records, run_id).lost for h in topology.handlers):
            time.sleep(SETTLE_EXTRAS_SECONDS)
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(1.0)


def _wait_lag_zero(settings: Settings, topology: Topology, timeout_seconds: float) -> float | None:
    """Seconds until every group has committed everything on its source and retry topics (None: not in time)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_seconds:
        lags = [lag for h in topology.handlers
                for lag in read_lag(settings, topology.group(h.name), [h.source, *h.retry_topics])]
        if all(lag.messages == 0 for lag in lags):
            return time.monotonic() - started
        time.sleep(1.0)
    return None
