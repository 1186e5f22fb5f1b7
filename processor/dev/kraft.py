"""Apache Kafka on this machine: a KRaft cluster of one or more nodes, started with ``java -cp``.

The jars come from Maven Central (processor/dev/kafka.pom.xml, fetched by ``make kafka`` into a cache
outside the repo); no Docker and no tarball. Every node is broker and controller at once (combined
mode) with a static voter set: the smallest cluster that still has a real controller quorum, so a
controller failover and a leader kill are the same events a production cluster sees.

A cluster's plan (id, node ids, ports) is written to ``cluster.json`` in its directory and reused, so
``dev down`` then ``dev up`` brings back the same cluster with its log on disk.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from processor.dev.servers import ServerProcess, broker_answers, free_port, spawn, stop_all, tail, wait_ready
from processor.errors import StackError

KAFKA_VERSION = "4.4.0"
PLAN_FILE = "cluster.json"
# A JVM's start-up takes longer than a Tansu's; three at once on two cores take longer still.
READY_SECONDS = 90.0
# Tests, the dev loop and the chaos lab: start fast and idle cheaply (C1 only, serial GC); measured
# on this 2-core machine, half the CPU of the defaults to start a 3-node cluster and to keep it idle.
JVM_LEAN = ("-Xms64m", "-Xmx512m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-XX:CICompilerCount=1")
# The bench: what a production broker runs (C2, G1), since the broker's speed is part of what it measures.
JVM_THROUGHPUT = ("-Xms512m", "-Xmx1g", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20")


@dataclass(frozen=True)
class Node:
    """One KRaft node: a broker and a controller in one JVM."""

    node_id: int
    port: int
    controller_port: int


@dataclass(frozen=True)
class Cluster:
    """A planned cluster: where its files are, its id and its nodes."""

    workdir: Path
    cluster_id: str
    nodes: tuple[Node, ...]

    @property
    def replication_factor(self) -> int:
        return min(3, len(self.nodes))

    @property
    def min_insync_replicas(self) -> int:
        # RF 3 with min ISR 2: an acknowledged write survives any one broker's loss, and one broker
        # down still accepts writes. With fewer nodes there is nothing to trade.
        return 2 if self.replication_factor >= 3 else 1

    def node_dir(self, node: Node) -> Path:
        return self.workdir / f"node-{node.node_id}"

    def node(self, node_id: int) -> Node:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise StackError(f"the cluster has no node {node_id}")


def libs_dir() -> Path:
    """The Kafka jars: $PROCESSOR_KAFKA_LIBS, else the cache ``make kafka`` fills."""
    configured = os.environ.get("PROCESSOR_KAFKA_LIBS")
    path = Path(configured) if configured else Path.home() / ".cache" / "processor" / f"kafka-{KAFKA_VERSION}" / "libs"
    if not any(path.glob("kafka_2.13-*.jar")):
        raise StackError(f"no Kafka jars in {path}: run `make kafka` (fetches them from Maven Central)")
    return path


def java_binary() -> str:
    home = os.environ.get("JAVA_HOME")
    path = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not path or not Path(path).exists():
        raise StackError("java is not on PATH: install Java 17+ (Debian: apt-get install openjdk-17-jre-headless)")
    return path


def plan(workdir: Path, brokers: int) -> Cluster:
    """The cluster recorded in ``workdir``, or a new one on free ports (recorded for next time)."""
    path = workdir / PLAN_FILE
    if path.exists():
        data = orjson.loads(path.read_bytes())
        cluster = Cluster(workdir, data["cluster_id"], tuple(Node(**n) for n in data["nodes"]))
        if len(cluster.nodes) != brokers:
            raise StackError(
                f"{workdir} holds a {len(cluster.nodes)}-broker cluster; use --brokers {len(cluster.nodes)} "
                "or `processor dev down --purge` first"
            )
        return cluster
    if brokers < 1:
        raise StackError(f"--brokers {brokers}: a cluster needs at least one broker")
    # Kafka's cluster ids are a UUID in URL-safe base64 without padding.
    cluster_id = "-"
    while cluster_id.startswith("-"):  # as Kafka's Uuid.randomUuid(): kafka-storage would read it as an option
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    nodes = tuple(Node(node_id=i + 1, port=free_port(), controller_port=free_port()) for i in range(brokers))
    cluster = Cluster(workdir, cluster_id, nodes)
    workdir.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(
        {"cluster_id": cluster_id, "nodes": [asdict(n) for n in nodes]}, option=orjson.OPT_INDENT_2
    ))
    return cluster


def server_properties(cluster: Cluster, node: Node) -> dict[str, str]:
    """The node's server.properties: KRaft combined mode, loopback listeners, no auto-created topics."""
    rf, min_isr = str(cluster.replication_factor), str(cluster.min_insync_replicas)
    voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in cluster.nodes)
    return {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(cluster.node_dir(node) / "data"),
        "default.replication.factor": rf,
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": rf,
        "transaction.state.log.replication.factor": rf,
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.replication.factor": rf,
        "share.coordinator.state.topic.min.isr": min_isr,
        # 50 partitions each by default: 150 replicas apiece on a 3-node cluster, minutes of CPU on
        # two cores before the first group can join. Ten still spread the coordinators.
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.num.partitions": "10",
        # Topics are created by the worker and the CLI with the partitions the topology asks for.
        "auto.create.topics.enable": "false",
        "unclean.leader.election.enable": "false",
        # The first group of a fresh cluster would wait 3 s for more members; tests start one at a time.
        "group.initial.rebalance.delay.ms": "0",
    }


def _write_properties(cluster: Cluster, node: Node) -> Path:
    directory = cluster.node_dir(node)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "server.properties"
    path.write_text("".join(f"{k}={v}\n" for k, v in server_properties(cluster, node).items()))
    return path


def _classpath() -> str:
    return f"{libs_dir()}/*"


def _format(cluster: Cluster, node: Node, properties: Path) -> None:
    if (cluster.node_dir(node) / "data" / "meta.properties").exists():
        return  # formatted before: this is a restart of a durable log
    result = subprocess.run(
        [java_binary(), *JVM_LEAN, "-cp", _classpath(), "kafka.tools.StorageTool",
         "format", "-t", cluster.cluster_id, "-c", str(properties)],
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        said = (result.stderr.strip() or result.stdout.strip())[-300:]
        raise StackError(f"kafka-storage format of node {node.node_id} failed (exit {result.returncode}): {said}")


def start_node(cluster: Cluster, node: Node, *, throughput: bool = False) -> ServerProcess:
    """Start one node's JVM (formatting its log first if new); does not wait for it."""
    properties = _write_properties(cluster, node)
    _format(cluster, node, properties)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "KAFKA_", "JAVA_TOOL_"))}
    argv = [java_binary(), *(JVM_THROUGHPUT if throughput else JVM_LEAN), "-Djava.awt.headless=true",
            # Without a log4j2 config Kafka logs errors only; warnings explain a chaos run's leader moves.
            "-Dlog4j2.level=WARN",
            "-cp", _classpath(), "kafka.Kafka", str(properties)]
    return spawn(f"kafka-{node.node_id}", argv, node.port, cluster.node_dir(node) / "kafka.log", env)


def start(cluster: Cluster, *, throughput: bool = False) -> tuple[ServerProcess, ...]:
    """Start every node and wait until each answers metadata requests (they need each other's votes)."""
    servers: list[ServerProcess] = []
    try:
        for node in cluster.nodes:
            servers.append(start_node(cluster, node, throughput=throughput))
    except BaseException:
        stop_all(servers)
        raise
    wait_ready(servers, broker_answers, READY_SECONDS)
    return tuple(servers)


def wait_node(server: ServerProcess) -> None:
    """Wait until a restarted node answers again."""
    wait_ready([server], broker_answers, READY_SECONDS)


def bootstrap_servers(servers: tuple[ServerProcess, ...]) -> str:
    return ",".join(s.address for s in servers)


def active_controller(cluster: Cluster) -> int | None:
    """The node id the quorum elected, read from the nodes' quorum-state files (highest epoch wins)."""
    best: tuple[int, int] | None = None
    for node in cluster.nodes:
        path = cluster.node_dir(node) / "data" / "__cluster_metadata-0" / "quorum-state"
        try:
            data = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        leader, epoch = data.get("leaderId", -1), data.get("leaderEpoch", -1)
        if leader >= 0 and (best is None or epoch > best[1]):
            best = (leader, epoch)
    return None if best is None else best[0]


def log_tail(cluster: Cluster, node: Node) -> str:
    return tail(str(cluster.node_dir(node) / "kafka.log"))
