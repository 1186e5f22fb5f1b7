"""Helpers for integration tests: worker processes, producing and reading topics with a plain client."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from processor.dev.servers import free_port
from processor.observability.scrape import Scrape, scrape

REPO = Path(__file__).resolve().parents[1]
WORKER_READY_SECONDS = 60.0


@dataclass(frozen=True)
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes] = field(default_factory=dict)

    def json(self) -> dict[str, object]:
        assert self.value is not None
        loaded = orjson.loads(self.value)
        assert isinstance(loaded, dict)
        return loaded


class WorkerProcess:
    """`processor worker MODULE` in a child process, with its own /metrics port."""

    def __init__(self, module: str, env: Mapping[str, str], log_dir: Path, name: str = "worker") -> None:
        self.module = module
        self.port = free_port()
        self.env = {**os.environ, **env, "PROCESSOR_METRICS_PORT": str(self.port)}
        self.log_path = log_dir / f"{name}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.command = ["worker", module]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def start(self) -> WorkerProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "processor", *self.command],
                env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            )
        return self

    def metrics(self) -> Scrape:
        return scrape(self.url)

    def wait_assigned(self, handlers: Iterable[str], minimum: int = 1, timeout: float = WORKER_READY_SECONDS) -> None:
        """Wait until every handler has at least ``minimum`` partitions assigned."""
        names = list(handlers)

        def ready() -> bool:
            s = self.metrics()
            return all(s.value("processor_assigned_partitions", handler=h) >= minimum for h in names)

        self.wait_for(ready, timeout, f"partitions assigned to {names}")

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited ({self.proc.returncode}) waiting for {what}: {self.tail()}")
            try:
                if condition():
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}: {self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL: no goodbye, no commit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM and wait for a graceful exit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"worker did not stop within {timeout}s: {self.tail()}") from None


def produce(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes | None]],
            headers: list[tuple[str, bytes]] | None = None) -> int:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    count = 0
    for key, value in records:
        producer.produce(topic, value=value, key=key, headers=headers or [])
        producer.poll(0)
        count += 1
    assert producer.flush(30) == 0, "not every test record was delivered"
    return count


def read_topic(bootstrap: str, topic: str, expect: int, timeout: float = 60.0, settle: float = 1.0) -> list[Message]:
    """Every record of ``topic`` from the beginning: waits for ``expect`` records, then ``settle`` seconds more
    to catch extras (a duplicate output must not hide behind an early return)."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"reader-{time.monotonic_ns()}",
        "enable.auto.commit": False, "auto.offset.reset": "earliest",
    })
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.partitions])
        out: list[Message] = []
        deadline = time.monotonic() + timeout
        settle_until: float | None = None
        while time.monotonic() < deadline:
            if settle_until is None and len(out) >= expect:
                settle_until = time.monotonic() + settle
            if settle_until is not None and time.monotonic() >= settle_until:
                break
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            out.append(Message(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(),
                               dict(msg.headers() or [])))
        return out
    finally:
        consumer.close()


def bed_worker(backend_env: Mapping[str, str], name: str, log_dir: Path, **options: str) -> WorkerProcess:
    """A worker of tests/topologies/testbed.py; ``options`` are TESTBED_* settings without the prefix."""
    env = {**backend_env, "TESTBED_NAME": name, "PROCESSOR_LOG_LEVEL": "INFO"}
    env.update({f"TESTBED_{k.upper()}": v for k, v in options.items()})
    return WorkerProcess("tests.topologies.testbed", env, log_dir, name=f"worker-{name}")


def event(event_id: str, n: int = 0) -> tuple[bytes, bytes]:
    return event_id.encode(), orjson.dumps({"event_id": event_id, "n": n})
