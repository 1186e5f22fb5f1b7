"""`processor dev up | down | status` against real servers, checked with independent clients (kcat, redis-cli)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic

from processor.dev import kraft
from processor.dev.servers import free_port


def dev(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "processor", "dev", *args, "--state-dir", str(state)],
                          capture_output=True, text=True, timeout=90)


def _kcat() -> str:
    # `make` puts a kcat into the venv that uses a librdkafka new enough for the embedded broker.
    kcat = shutil.which("kcat", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    assert kcat, "kcat is missing: `make test` installs it (Debian package kcat)"
    return kcat


def _pids(status: str, expect: int) -> list[int]:
    servers = [line for line in status.splitlines() if " pid " in line]
    assert len(servers) == expect, status
    assert all(" running " in line for line in servers), status
    return [int(line.split(" pid ")[1].split()[0]) for line in servers]


def shell_env(exports: str) -> dict[str, str]:
    # What `eval "$(processor dev up)"` does, done by a real shell.
    out = subprocess.run(["bash", "-c", 'eval "$1"; echo "$KAFKA_BOOTSTRAP_SERVERS"; echo "$REDIS_URL"', "_", exports],
                         capture_output=True, text=True, check=True).stdout.split()
    return {"KAFKA_BOOTSTRAP_SERVERS": out[0], "REDIS_URL": out[1]}


def test_up_env_status_down(tmp_path: Path) -> None:
    kcat = _kcat()
    state = tmp_path / "state"
    up = dev(state, "up")
    try:
        assert up.returncode == 0, up.stderr
        env = shell_env(up.stdout)
        assert env["KAFKA_BOOTSTRAP_SERVERS"].startswith("127.0.0.1:")
        assert env["REDIS_URL"].startswith("redis://127.0.0.1:")

        listing = subprocess.run([kcat, "-b", env["KAFKA_BOOTSTRAP_SERVERS"], "-L", "-m", "10"],
                                 capture_output=True, text=True, timeout=30)
        assert listing.returncode == 0, listing.stderr
        assert "1 brokers:" in listing.stdout
        pong = subprocess.run(["redis-cli", "-u", env["REDIS_URL"], "ping"], capture_output=True, text=True, timeout=10)
        assert pong.stdout.strip() == "PONG"

        again = dev(state, "up")
        assert again.returncode == 0
        assert "already running" in again.stderr
        assert shell_env(again.stdout) == env

        status = dev(state, "status")
        assert status.returncode == 0
        assert status.stdout.splitlines()[0] == "broker: tansu (embedded)"
        recorded = _pids(status.stdout, expect=2)
    finally:
        down = dev(state, "down")
    assert down.returncode == 0, down.stderr
    for pid in recorded:
        assert not Path(f"/proc/{pid}").exists() or b"zombie" in Path(f"/proc/{pid}/status").read_bytes().lower()
    after = dev(state, "status")
    assert after.returncode == 3
    assert "not running" in after.stdout


def test_a_kafka_cluster_keeps_its_log_across_down_and_up(tmp_path: Path) -> None:
    # A real KRaft cluster of three: what was acknowledged before `dev down` is read back after `dev up`.
    kcat, state = _kcat(), tmp_path / "state"
    up = dev(state, "up", "--broker", "kafka", "--brokers", "3")
    try:
        assert up.returncode == 0, up.stderr
        assert "apache kafka" in up.stderr
        servers = shell_env(up.stdout)["KAFKA_BOOTSTRAP_SERVERS"]
        assert len(servers.split(",")) == 3
        assert "PROCESSOR_TOPIC_REPLICATION_FACTOR=3" in up.stdout
        status = dev(state, "status")
        assert status.stdout.splitlines()[0] == f"broker: apache kafka {kraft.KAFKA_VERSION} (KRaft, 3 brokers)"
        _pids(status.stdout, expect=4)
        admin = AdminClient({"bootstrap.servers": servers})
        admin.create_topics([NewTopic("durable", 1, 3, config={"min.insync.replicas": "2"})])["durable"].result(30)
        lines = "".join(f"event-{n}\n" for n in range(50))
        produced = subprocess.run([kcat, "-b", servers, "-P", "-t", "durable", "-X", "acks=all"],
                                  input=lines, capture_output=True, text=True, timeout=60)
        assert produced.returncode == 0, produced.stderr

        assert dev(state, "down").returncode == 0
        again = dev(state, "up", "--broker", "kafka", "--brokers", "3")
        assert again.returncode == 0, again.stderr
        assert shell_env(again.stdout)["KAFKA_BOOTSTRAP_SERVERS"] == servers  # ports kept in cluster.json
        read = subprocess.run([kcat, "-b", servers, "-C", "-t", "durable", "-o", "beginning", "-e", "-q"],
                              capture_output=True, text=True, timeout=60)
        assert read.stdout.splitlines() == [f"event-{n}" for n in range(50)], read.stderr

        other = dev(state, "up")
        assert other.returncode == 1
        assert "already runs apache kafka" in other.stderr
    finally:
        dev(state, "down", "--purge")
    assert not (state / "kafka").exists()


def test_down_stops_only_what_up_started(tmp_path: Path) -> None:
    bystander = subprocess.Popen(["redis-server", "--port", str(free_port()), "--save", "", "--appendonly", "no"],
                                 stdout=subprocess.DEVNULL)
    try:
        assert dev(tmp_path / "s", "up").returncode == 0
        assert dev(tmp_path / "s", "down").returncode == 0
        assert bystander.poll() is None, "dev down killed a redis-server it did not start"
    finally:
        bystander.terminate()
        bystander.wait()


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = dev(tmp_path / "s", "up", "--kafka-port", str(port))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"processor: error: kafka: port {port} is in use; choose another port or omit it for a free one"
    ]
    assert not (tmp_path / "s" / "dev.json").exists()


def test_env_without_a_stack_says_what_to_do(tmp_path: Path) -> None:
    result = dev(tmp_path / "none", "env")
    assert result.returncode == 2
    assert "run `processor dev up` first" in result.stderr
    assert os.path.exists(tmp_path)
    assert result.stdout == ""
