"""Chaos experiments: the servers an experiment runs against, and the faults that can be done to them.

By default every experiment gets a stack of its own, in its report directory: an Apache Kafka KRaft
cluster of three nodes (replication factor 3, min.insync.replicas 2: what a production cluster runs, so
a broker's loss is a failover and not an outage) and a redis-server, on free ports; so killing a broker
or restarting Redis never touches anybody else's servers. ``--broker tansu`` runs them on the embedded
broker instead, for the faults that do not need a cluster.
With ``KAFKA_BOOTSTRAP_SERVERS`` and ``REDIS_URL`` set, the experiment runs against those instead (the
docker compose stack of ``docker-compose.kafka.yml``), and broker and Redis faults become
``docker compose pause|unpause|stop|start <service>`` calls.

A restarted Redis must come back with the dedup state it had (processor.runtime.dedup: dedup lasts as long
as Redis keeps the done-marks), so an experiment that restarts Redis starts it with an
append-only file fsynced at every write (``--appendonly yes --appendfsync always``): a graceful stop
loses nothing and the restarted server reloads every claim and done-mark, and the simulated services'
ledgers with them. Without it a restart is a different experiment (total loss of dedup state).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from processor.dev import kraft
from processor.dev.devstack import BrokerKind
from processor.dev.servers import ServerProcess, free_port, start_redis, stop_all
from processor.dev.servers import start_broker as start_tansu
from processor.errors import StackError

COMPOSE_FILE_ENV = "PROCESSOR_CHAOS_COMPOSE_FILE"
DEFAULT_COMPOSE_FILE = "docker-compose.kafka.yml"
COMPOSE_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class Endpoints:
    """Where the broker and Redis of an experiment are."""

    bootstrap_servers: str
    redis_url: str
    external: bool
    replication_factor: int = 1

    def env(self) -> dict[str, str]:
        return {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers, "REDIS_URL": self.redis_url,
                "PROCESSOR_TOPIC_REPLICATION_FACTOR": str(self.replication_factor)}


def external_endpoints(environ: dict[str, str] | None = None) -> Endpoints | None:
    """The servers named by the environment, when both are set (then nothing is started)."""
    env = os.environ if environ is None else environ
    bootstrap, redis_url = env.get("KAFKA_BOOTSTRAP_SERVERS"), env.get("REDIS_URL")
    if bootstrap and redis_url:
        replication = int(env.get("PROCESSOR_TOPIC_REPLICATION_FACTOR") or 1)
        return Endpoints(bootstrap, redis_url, external=True, replication_factor=replication)
    return None


class Stack:
    """The broker (or cluster) and Redis of one experiment; a context manager that stops what it started."""

    def __init__(
        self, workdir: Path, *, persistent_redis: bool = False, external: Endpoints | None = None,
        broker: BrokerKind = "kafka", brokers: int = 3,
    ) -> None:
        self.workdir = workdir
        self.persistent_redis = persistent_redis
        self._external = external
        self.broker_kind: BrokerKind = broker
        self.brokers = brokers
        self.cluster: kraft.Cluster | None = None
        self.nodes: dict[int, ServerProcess] = {}  # node id -> its process (Tansu: node 1)
        self._paused: set[int] = set()
        self.redis: ServerProcess | None = None
        self._redis_port = 0

    @property
    def endpoints(self) -> Endpoints:
        if self._external is not None:
            return self._external
        if not self.nodes or self._redis_port == 0:
            raise StackError("the experiment's stack is not running")
        bootstrap = ",".join(server.address for server in self.nodes.values())
        rf = self.cluster.replication_factor if self.cluster is not None else 1
        return Endpoints(bootstrap, f"redis://127.0.0.1:{self._redis_port}/0", external=False, replication_factor=rf)

    def describe(self) -> str:
        if self._external is not None:
            return f"external servers ({self._external.bootstrap_servers})"
        if self.broker_kind == "tansu":
            return "tansu (embedded)"
        return f"apache kafka {kraft.KAFKA_VERSION} (KRaft, {self.brokers} brokers)"

    def __enter__(self) -> Stack:
        if self._external is not None:
            return self
        if self.broker_kind == "tansu":
            self.nodes = {1: start_tansu(free_port(), self.workdir / "kafka.log")}
        else:
            self.cluster = kraft.plan(self.workdir / "kafka", self.brokers)
            self.nodes = {node.node_id: server
                          for node, server in zip(self.cluster.nodes, kraft.start(self.cluster), strict=True)}
        try:
            self._redis_port = free_port()
            self._start_redis()
        except BaseException:
            stop_all(self.nodes.values())
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.redis is not None:
            _signal(self.redis.pid, signal.SIGCONT)  # a paused server cannot act on SIGTERM
            self.redis.stop()
        stop_all(self.nodes.values())

    def _start_redis(self) -> None:
        log, data = self.workdir / "redis.log", self.workdir / "redis"
        self.redis = start_redis(self._redis_port, log, data, durable=self.persistent_redis)

    # -- faults -------------------------------------------------------------------------------------------

    def pause(self, service: str) -> None:
        """Freeze ``kafka`` (every broker) or ``redis`` (SIGSTOP; ``docker compose pause`` on the compose stack)."""
        if self._external is not None:
            compose("pause", service)
        else:
            for server in self._servers(service):
                _signal(server.pid, signal.SIGSTOP)

    def resume(self, service: str) -> None:
        """Undo ``pause``."""
        if self._external is not None:
            compose("unpause", service)
        else:
            for server in self._servers(service):
                _signal(server.pid, signal.SIGCONT)

    def stop_redis(self) -> None:
        """Stop Redis gracefully (SIGTERM: it writes its append-only file and exits)."""
        if self._external is not None:
            compose("stop", "redis")
        else:
            self._servers("redis")[0].stop()

    def start_redis(self) -> None:
        """Start Redis again on the same port, with the same data directory."""
        if self._external is not None:
            compose("start", "redis")
        else:
            self._start_redis()

    def _servers(self, service: str) -> list[ServerProcess]:
        servers = list(self.nodes.values()) if service == "kafka" else [self.redis] if service == "redis" else []
        if not servers or any(server is None for server in servers):
            raise StackError(f"no {service} server in this experiment's stack")
        return [server for server in servers if server is not None]

    # -- broker faults on a cluster of our own --------------------------------------------------------------

    def kafka_cluster(self) -> kraft.Cluster:
        """The experiment's own Kafka cluster; a broker fault on anything else is an error, not a no-op."""
        if self.cluster is None:
            raise StackError(f"this fault needs the experiment's own Kafka cluster, not {self.describe()}: "
                             "run it with --broker kafka and without KAFKA_BOOTSTRAP_SERVERS")
        return self.cluster

    def node(self, node_id: int) -> ServerProcess:
        self.kafka_cluster()
        return self.nodes[node_id]

    def kill_broker(self, node_id: int) -> None:
        """SIGKILL one broker: no controlled shutdown, its leaderships move only when the controller fences it."""
        server = self.node(node_id)
        _signal(server.pid, signal.SIGKILL)
        server.stop()  # reaps it

    def stop_broker(self, node_id: int) -> None:
        """SIGTERM one broker: a controlled shutdown hands its leaderships over first."""
        self.node(node_id).stop(timeout_seconds=60.0)

    def start_broker(self, node_id: int) -> None:
        """Start a stopped broker again on its ports and its log, and wait until it answers."""
        cluster = self.kafka_cluster()
        server = kraft.start_node(cluster, cluster.node(node_id))
        self.nodes[node_id] = server
        kraft.wait_node(server)

    def pause_broker(self, node_id: int) -> None:
        _signal(self.node(node_id).pid, signal.SIGSTOP)
        self._paused.add(node_id)

    def resume_broker(self, node_id: int) -> None:
        _signal(self.node(node_id).pid, signal.SIGCONT)
        self._paused.discard(node_id)

    def partition_leader(self, topic: str, partition: int = 0) -> int:
        """The node id leading ``topic``'s ``partition`` now."""
        meta = self._metadata(topic).get(topic)
        if meta is None or meta.error is not None or partition not in meta.partitions:
            raise StackError(f"no metadata for {topic}[{partition}]: {None if meta is None else meta.error}")
        return int(meta.partitions[partition].leader)

    def under_replicated(self) -> int:
        """Partitions whose in-sync replicas are fewer than their replicas, over every topic."""
        topics = self._metadata(None).values()
        return sum(1 for t in topics for p in t.partitions.values() if len(p.isrs) < len(p.replicas))

    def active_controller(self) -> int:
        leader = kraft.active_controller(self.kafka_cluster())
        if leader is None:
            raise StackError("no node records an elected controller")
        return leader

    def _metadata(self, topic: str | None) -> dict[str, Any]:
        # Only the brokers that can answer: a paused one would hold the request until it times out.
        live = [s.address for n, s in self.nodes.items() if s.alive() and n not in self._paused]
        admin = AdminClient({"bootstrap.servers": ",".join(live), "log_level": 0})
        try:
            return dict(admin.list_topics(topic, timeout=10).topics)
        except KafkaException as exc:
            raise StackError(f"metadata request failed: {exc}") from None


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def compose(action: str, service: str) -> None:
    """``docker compose -f <file> <action> <service>`` (the file from PROCESSOR_CHAOS_COMPOSE_FILE)."""
    docker = shutil.which("docker")
    if docker is None:
        raise StackError(f"cannot {action} {service}: the experiment targets external servers (KAFKA_BOOTSTRAP_"
                         "SERVERS/REDIS_URL are set) and broker/Redis faults need `docker compose`")
    file = os.environ.get(COMPOSE_FILE_ENV, DEFAULT_COMPOSE_FILE)
    try:
        done = subprocess.run([docker, "compose", "-f", file, action, service], capture_output=True, text=True,
                              timeout=COMPOSE_TIMEOUT_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        raise StackError(f"docker compose {action} {service} took over {COMPOSE_TIMEOUT_SECONDS:.0f}s") from None
    if done.returncode != 0:
        raise StackError(f"docker compose {action} {service} failed: {done.stderr.strip()[-300:]}")
