"""``processor bench --redis-modes``: our pipeline on one Redis, on a Redis Cluster, and on the cluster with WAIT.

One Apache Kafka node (or KAFKA_BOOTSTRAP_SERVERS), and the same number of events for each run: (c), our
pipeline, with dedup on one redis-server (the bench's own, or REDIS_URL), on a fresh local Redis Cluster
(three masters, a replica each), and on one with ``REDIS_WAIT_REPLICAS=1`` (every dedup write waits for
its replica: what closing the failover gap costs).
Each run's events/s and its ratio to one Redis, in the same invocation, and the Redis memory it left per
event: the masters' ``used_memory`` (less the replication backlog and client buffers) after the run less
before it, over the events: the done-marks, in a layout sized for the events as one time bucket fills
(``processor bench --dedup-memory`` measures other fills); the replicas hold as much again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from processor.bench import report as br
from processor.bench.command import BenchOptions, run_bench
from processor.config import Settings
from processor.dev.devstack import scratch_stack
from processor.dev.redis_cluster import start_redis_cluster
from processor.dev.servers import stop_all
from processor.runtime.done_marks import DoneMarks
from processor.topology.topology import Topology

HEADER = f"{'dedup store':<24} {'events/s':>9} {'vs one Redis':>13} {'Redis B/event':>14}"


@dataclass(frozen=True)
class ModeRow:
    """One run of (c): its dedup store, events/s (None: it did not finish) and Redis bytes per event."""

    label: str
    events_per_s: float | None
    bytes_per_event: float
    note: str = ""

    def line(self, baseline: float | None) -> str:
        rate = "failed" if self.events_per_s is None else f"{self.events_per_s:.0f}"
        ratio = br.ratio(self.events_per_s, baseline)
        shown = "n/a" if ratio is None else f"{ratio:.2f}x"
        return f"{self.label:<24} {rate:>9} {shown:>13} {self.bytes_per_event:>14.1f}{self.note}"


def _held(memory: Mapping[str, Any]) -> int:
    # Not the replication backlog (a master's grows to 1 MB with its first writes) nor client buffers:
    # what the data costs.
    return int(memory["used_memory"]) - sum(int(memory.get(part, 0)) for part in (
        "mem_replication_backlog", "mem_clients_slaves", "mem_clients_normal"))


def _masters_memory(url: str, cluster: bool) -> int:
    if not cluster:
        client = redis.Redis.from_url(url)
        try:
            return _held(client.info("memory"))
        finally:
            client.close()
    nodes = redis.RedisCluster.from_url(url)
    try:
        used = nodes.info("memory", target_nodes=redis.RedisCluster.PRIMARIES)
        return sum(_held(node) for node in used.values())
    finally:
        nodes.close()


def measure_redis_modes(options: BenchOptions, env: Mapping[str, str],
                        progress: Callable[[str], None]) -> list[ModeRow]:
    """Run (c) on each dedup store in turn: Kafka and the one Redis from ``env`` (else the bench's own),
    a fresh local Redis Cluster for each cluster run."""
    only_c = dataclasses.replace(options, only=frozenset({br.PIPELINE}), latency=False, soak_seconds=0.0)
    rows: list[ModeRow] = []
    # A layout sized for the events as a bucket fills at its rate: they come at once, into one time bucket
    # (of the default TTL, which the bench topology keeps).
    peak_rate = options.events / DoneMarks("", Topology("bench").dedup_ttl_seconds, 1.0).bucket_seconds
    with contextlib.ExitStack() as own:
        servers = {name: env[name] for name in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL") if env.get(name)}
        if len(servers) < 2:  # the bench's own Kafka node and redis-server for what env does not name
            stack = own.enter_context(scratch_stack(options.state_dir / "bench-redis-modes", "kafka",
                                                    throughput=True))
            servers = {**stack.env(), **servers}
        for label, mode, wait in (("one Redis", "single", 0), ("Redis Cluster (3+3)", "cluster", 0),
                                  ("Redis Cluster, WAIT 1", "cluster", 1)):
            with contextlib.ExitStack() as cluster:
                url = servers["REDIS_URL"]
                if mode == "cluster":  # a fresh one each: no run's memory grows on what an earlier one allocated
                    tmp = cluster.enter_context(tempfile.TemporaryDirectory(prefix="processor-bench-cluster-"))
                    nodes = start_redis_cluster(Path(tmp))
                    cluster.callback(stop_all, nodes)
                    url = f"redis://{nodes[0].address}/0"
                settings = Settings.load(env, overrides={
                    "KAFKA_BOOTSTRAP_SERVERS": servers["KAFKA_BOOTSTRAP_SERVERS"], "REDIS_URL": url,
                    "REDIS_MODE": mode, "REDIS_WAIT_REPLICAS": str(wait)})
                before = _masters_memory(url, mode == "cluster")
                progress(f"bench --redis-modes: (c) on {label}")
                report = run_bench(settings, only_c, f"one Apache Kafka node, {label}", progress,
                                   worker_env={"PROCESSOR_BENCH_DEDUP_PEAK_RATE": str(peak_rate)})
                grown = _masters_memory(url, mode == "cluster") - before
            row = report.row(br.PIPELINE)
            note = f"  ({row.note})" if row is not None and row.status != br.OK else ""
            rows.append(ModeRow(label, report.rate(br.PIPELINE), grown / options.events, note))
    return rows


def render(rows: list[ModeRow], options: BenchOptions) -> str:
    """The table, with each run's ratio to the one-Redis run of the same invocation."""
    baseline = rows[0].events_per_s if rows else None
    lines = [f"processor bench --redis-modes: (c) over {options.events} events, {options.partitions} partitions",
             HEADER, *(row.line(baseline) for row in rows)]
    return "\n".join(lines)
