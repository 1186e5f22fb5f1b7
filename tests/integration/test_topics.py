"""`processor topics create` makes every topic a topology needs, idempotently, with the partitions asked."""

from __future__ import annotations

import os
import subprocess
import sys

from confluent_kafka.admin import AdminClient

from tests.conftest import REPO, Backend


def test_topics_create_is_idempotent(backend: Backend, unique: str) -> None:
    env = {**os.environ, **backend.env(), "TESTBED_NAME": unique, "TESTBED_HANDLERS": "a,b"}
    command = [sys.executable, "-m", "processor", "topics", "create", "tests.topologies.testbed", "--partitions", "4"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert first.returncode == 0, first.stderr
    expected = {f"{unique}.in", f"{unique}.a.out", f"{unique}.b.out", f"{unique}.in.a.retry.1s",
                f"{unique}.in.a.retry.2s", f"{unique}.in.b.retry.1s", f"{unique}.in.b.retry.2s",
                f"{unique}.in.a.dlq", f"{unique}.in.b.dlq"}
    assert {line.split()[1] for line in first.stdout.splitlines() if line.startswith("created")} == expected
    topics = AdminClient({"bootstrap.servers": backend.bootstrap_servers}).list_topics(timeout=10).topics
    assert all(len(topics[name].partitions) == 4 for name in expected)

    second = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert second.returncode == 0, second.stderr
    assert [line.split()[0] for line in second.stdout.splitlines()] == ["exists"] * len(expected)
