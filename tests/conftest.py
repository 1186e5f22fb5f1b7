"""Test backends, chosen by environment and never mocked.

- default: a Tansu broker and a redis-server of the session's own, on free ports;
- ``KAFKA_BOOTSTRAP_SERVERS`` and ``REDIS_URL`` set: those servers;
- ``PROCESSOR_TEST_BACKEND=testcontainers``: Apache Kafka and Redis in containers (needs a Docker engine).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from processor.config import Settings
from processor.dev.servers import ServerProcess, embedded_stack

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Backend:
    """Where the tests' broker and Redis are."""

    kind: str
    bootstrap_servers: str
    redis_url: str
    broker: ServerProcess | None = None

    def env(self) -> dict[str, str]:
        return {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers, "REDIS_URL": self.redis_url}

    def settings(self, **overrides: str) -> Settings:
        return Settings.load(overrides={
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers, "REDIS_URL": self.redis_url, **overrides,
        })


def _testcontainers() -> Iterator[Backend]:
    from testcontainers.kafka import KafkaContainer
    from testcontainers.redis import RedisContainer

    with KafkaContainer("apache/kafka:3.9.1").with_kraft() as kafka, RedisContainer("redis:7") as redis_c:
        host, port = redis_c.get_container_host_ip(), redis_c.get_exposed_port(6379)
        yield Backend("testcontainers", kafka.get_bootstrap_server(), f"redis://{host}:{port}/0")


@pytest.fixture(scope="session")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    mode = os.environ.get("PROCESSOR_TEST_BACKEND", "embedded")
    if mode == "testcontainers":
        yield from _testcontainers()
    elif os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("REDIS_URL"):
        yield Backend("external", os.environ["KAFKA_BOOTSTRAP_SERVERS"], os.environ["REDIS_URL"])
    elif mode == "embedded":
        with embedded_stack(tmp_path_factory.mktemp("stack")) as (broker, redis_server):
            yield Backend("embedded", broker.address, f"redis://{redis_server.address}/0", broker)
    else:
        raise pytest.UsageError(f"PROCESSOR_TEST_BACKEND={mode!r}: expected embedded or testcontainers")


@pytest.fixture
def unique() -> str:
    """A fresh name prefix, so tests never share topics, groups or Redis keys."""
    return f"t{uuid.uuid4().hex[:10]}"
