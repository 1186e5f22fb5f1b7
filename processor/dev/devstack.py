"""`processor dev up | down | status`: a broker and Redis in the background, tracked by a state file.

The broker is Tansu (the default: one binary, up in a second, memory-only) or Apache Kafka, a KRaft
cluster of one or more nodes whose log lives under the state directory and survives ``down``/``up``.
The state file (``.processor/dev.json`` by default) records what ``up`` started, so ``down`` stops
exactly that and nothing else, and a second ``up`` finds the running stack instead of starting another.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, get_args

import orjson

from processor.dev import kraft
from processor.dev.servers import ServerProcess, free_port, start_broker, start_redis, stop_all
from processor.errors import StackError

STATE_FILE = "dev.json"
BrokerKind = Literal["tansu", "kafka"]
BROKER_KINDS: tuple[str, ...] = get_args(BrokerKind)


@dataclass(frozen=True)
class DevStack:
    """The broker (one Tansu, or the nodes of a Kafka cluster) and the Redis of one stack."""

    broker: BrokerKind
    kafka: tuple[ServerProcess, ...]
    redis: ServerProcess

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(server.address for server in self.kafka)

    @property
    def redis_url(self) -> str:
        return f"redis://{self.redis.address}/0"

    @property
    def replication_factor(self) -> int:
        return min(3, len(self.kafka))

    def describe(self) -> str:
        """``tansu`` or ``apache kafka 4.4.0 (KRaft, 3 brokers)``: what runs, for messages and reports."""
        if self.broker == "tansu":
            return "tansu (embedded)"
        count = len(self.kafka)
        return f"apache kafka {kraft.KAFKA_VERSION} (KRaft, {count} broker{'s' if count > 1 else ''})"

    def env(self) -> dict[str, str]:
        env = {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers, "REDIS_URL": self.redis_url}
        if self.replication_factor > 1:
            env["PROCESSOR_TOPIC_REPLICATION_FACTOR"] = str(self.replication_factor)
        return env

    def shell_exports(self) -> str:
        """``export NAME=value`` lines that a shell can ``eval``."""
        return "".join(f"export {name}={value}\n" for name, value in self.env().items())

    def running(self) -> bool:
        return all(server.alive() for server in self.kafka) and self.redis.alive()

    def stop(self) -> None:
        self.redis.stop()
        stop_all(self.kafka)


def load(state_dir: Path) -> DevStack | None:
    """The stack recorded in ``state_dir``, or None when there is no readable record."""
    path = state_dir / STATE_FILE
    try:
        data = orjson.loads(path.read_bytes())
        # Before Apache Kafka, the record held one Tansu as a dict.
        kafka = data["kafka"] if isinstance(data["kafka"], list) else [data["kafka"]]
        return DevStack(
            broker=data.get("broker", "tansu"),
            kafka=tuple(ServerProcess(**server) for server in kafka),
            redis=ServerProcess(**data["redis"]),
        )
    except FileNotFoundError:
        return None
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise StackError(f"{path} is damaged ({exc}); stop the servers by hand and delete it") from None


def start(
    workdir: Path, broker: BrokerKind = "tansu", brokers: int = 1, *,
    kafka_port: int | None = None, redis_port: int | None = None, throughput: bool = False,
) -> DevStack:
    """Start a broker (or cluster) and a Redis with their files in ``workdir``; waits until all answer."""
    if broker not in BROKER_KINDS:
        raise StackError(f"--broker {broker}: choose one of {', '.join(BROKER_KINDS)}")
    if broker == "tansu":
        if brokers != 1:
            raise StackError(f"--brokers {brokers}: Tansu runs one broker; use --broker kafka for a cluster")
        kafka: tuple[ServerProcess, ...] = (start_broker(kafka_port or free_port(), workdir / "kafka.log"),)
    else:
        if kafka_port is not None:
            raise StackError("--kafka-port is for Tansu; a Kafka cluster keeps the ports in its cluster.json")
        kafka = kraft.start(kraft.plan(workdir / "kafka", brokers), throughput=throughput)
    try:
        redis_server = start_redis(redis_port or free_port(), workdir / "redis.log", workdir / "redis")
    except BaseException:
        stop_all(kafka)
        raise
    return DevStack(broker=broker, kafka=kafka, redis=redis_server)


def up(
    state_dir: Path, kafka_port: int | None, redis_port: int | None, broker: BrokerKind = "tansu", brokers: int = 1,
) -> tuple[DevStack, bool]:
    """Start the stack unless it already runs; returns it and whether this call started it."""
    current = load(state_dir)
    if current is not None:
        if current.running():
            if current.broker != broker or len(current.kafka) != brokers:
                raise StackError(
                    f"{state_dir} already runs {current.describe()}; `processor dev down` it first"
                )
            return current, False
        # A half-dead stack (one server crashed or was killed): stop the rest and start afresh.
        down(state_dir)
    stack = start(state_dir, broker, brokers, kafka_port=kafka_port, redis_port=redis_port)
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / STATE_FILE).write_bytes(orjson.dumps(
        {"broker": broker, "kafka": [asdict(s) for s in stack.kafka], "redis": asdict(stack.redis)},
        option=orjson.OPT_INDENT_2,
    ))
    return stack, True


def down(state_dir: Path, *, purge: bool = False) -> DevStack | None:
    """Stop what ``up`` recorded and forget it; ``purge`` also deletes the Kafka log on disk."""
    current = load(state_dir)
    if current is not None:
        current.stop()
        (state_dir / STATE_FILE).unlink(missing_ok=True)
    if purge:
        shutil.rmtree(state_dir / "kafka", ignore_errors=True)
    return current


@contextlib.contextmanager
def scratch_stack(
    workdir: Path, broker: BrokerKind = "tansu", brokers: int = 1, *, throughput: bool = False,
) -> Iterator[DevStack]:
    """A fresh broker (or cluster) and Redis on free ports for the length of a ``with`` block."""
    shutil.rmtree(workdir / "kafka", ignore_errors=True)  # scratch: never an earlier run's cluster
    stack = start(workdir, broker, brokers, throughput=throughput)
    try:
        yield stack
    finally:
        stack.stop()
