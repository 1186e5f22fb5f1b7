"""Test backends, chosen by environment and never mocked; the report's header and last line name the one that ran.

- default (``PROCESSOR_TEST_BACKEND=kafka``): Apache Kafka, one 3-node KRaft cluster (replication factor 3,
  ``min.insync.replicas=2``) and one redis-server for the whole session, started by the pytest process
  that runs first (the xdist controller) and shared by every worker: tests never share a name (``unique``),
  and three JVMs are what two cores can carry beside the workers under test;
- ``PROCESSOR_TEST_BACKEND=tansu``: the embedded broker and a redis-server per pytest process;
- ``KAFKA_BOOTSTRAP_SERVERS`` and ``REDIS_URL`` set: those servers;
- ``PROCESSOR_TEST_BACKEND=testcontainers``: Apache Kafka and Redis in containers (needs a Docker engine).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
import pytest

from processor.config import Settings
from processor.dev.devstack import DevStack, scratch_stack, start
from processor.dev.kraft import KAFKA_VERSION

REPO = Path(__file__).resolve().parents[1]
MODES = ("kafka", "tansu", "testcontainers")
# The controller hands the shared stack to the xdist workers (its children) in this variable.
SHARED = "PROCESSOR_TEST_SHARED_BACKEND"
CLUSTER_NODES = 3


@dataclass(frozen=True)
class Backend:
    """Where the tests' broker and Redis are."""

    kind: str
    bootstrap_servers: str
    redis_url: str
    replication_factor: int = 1

    def env(self) -> dict[str, str]:
        return {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers, "REDIS_URL": self.redis_url,
                "PROCESSOR_TOPIC_REPLICATION_FACTOR": str(self.replication_factor)}

    def settings(self, **overrides: str) -> Settings:
        return Settings.load(overrides={**self.env(), **overrides})


def _mode() -> str:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("REDIS_URL"):
        return "external"
    mode = os.environ.get("PROCESSOR_TEST_BACKEND", "kafka")
    if mode not in MODES:
        raise pytest.UsageError(f"PROCESSOR_TEST_BACKEND={mode!r}: expected one of {', '.join(MODES)}")
    return mode


def _describe(mode: str) -> str:
    if mode == "kafka":
        return (f"apache kafka {KAFKA_VERSION} (KRaft, {CLUSTER_NODES} brokers, replication factor 3, "
                "min.insync.replicas 2), shared by the session")
    return {"tansu": "tansu (embedded), one per pytest process", "external": "external (KAFKA_BOOTSTRAP_SERVERS)",
            "testcontainers": "apache kafka in testcontainers"}[mode]


_STACK: list[tuple[DevStack, Path]] = []  # the controller's shared stack and its directory, stopped at unconfigure
_FAILED: list[bool] = []  # whether the session failed: then its servers' logs stay for a look


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput") or _mode() != "kafka" or os.environ.get(SHARED):
        return
    if config.option.collectonly or _only_unit_tests(config):
        return
    workdir = Path(tempfile.mkdtemp(prefix="processor-test-kafka-"))
    stack = start(workdir, "kafka", CLUSTER_NODES)
    _STACK.append((stack, workdir))
    backend = Backend("kafka", stack.bootstrap_servers, stack.redis_url, stack.replication_factor)
    os.environ[SHARED] = orjson.dumps(asdict(backend)).decode()


def _only_unit_tests(config: pytest.Config) -> bool:
    args = [a for a in config.args if not a.startswith("-")]
    return bool(args) and all("tests/unit" in a for a in args)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _FAILED.append(exitstatus != 0)


def pytest_unconfigure(config: pytest.Config) -> None:
    while _STACK:
        stack, workdir = _STACK.pop()
        stack.stop()
        os.environ.pop(SHARED, None)
        if any(_FAILED):
            print(f"the shared cluster's logs are kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)  # ~100 MB of broker logs per run otherwise


def pytest_report_header(config: pytest.Config) -> str:
    return f"backend: {_describe(_mode())}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    mode = _mode()
    ran = "none started (unit tests only)" if mode == "kafka" and not os.environ.get(SHARED) else _describe(mode)
    terminalreporter.write_line(f"backend that ran: {ran}")


def _testcontainers() -> Iterator[Backend]:
    from testcontainers.kafka import KafkaContainer
    from testcontainers.redis import RedisContainer

    with KafkaContainer(f"apache/kafka:{KAFKA_VERSION}").with_kraft() as kafka, RedisContainer("redis:7") as redis_c:
        host, port = redis_c.get_container_host_ip(), redis_c.get_exposed_port(6379)
        yield Backend("testcontainers", kafka.get_bootstrap_server(), f"redis://{host}:{port}/0")


@pytest.fixture(scope="session")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    mode = _mode()
    if mode == "external":
        rf = int(os.environ.get("PROCESSOR_TOPIC_REPLICATION_FACTOR") or 1)
        yield Backend("external", os.environ["KAFKA_BOOTSTRAP_SERVERS"], os.environ["REDIS_URL"], rf)
    elif mode == "kafka":
        shared = os.environ.get(SHARED)
        if not shared:
            raise RuntimeError("no shared Kafka cluster: pytest_configure did not start one")
        yield Backend(**orjson.loads(shared))
    elif mode == "testcontainers":
        yield from _testcontainers()
    else:
        with scratch_stack(tmp_path_factory.mktemp("stack")) as stack:
            yield Backend("tansu", stack.bootstrap_servers, stack.redis_url)


@pytest.fixture
def unique() -> str:
    """A fresh name prefix, so tests never share topics, groups or Redis keys."""
    return f"t{uuid.uuid4().hex[:10]}"
