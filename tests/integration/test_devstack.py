"""`processor dev up | down | status` against real servers, checked with independent clients (kcat, redis-cli)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from processor.dev.servers import free_port


def dev(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "processor", "dev", *args, "--state-dir", str(state)],
                          capture_output=True, text=True, timeout=90)


def shell_env(exports: str) -> dict[str, str]:
    # What `eval "$(processor dev up)"` does, done by a real shell.
    out = subprocess.run(["bash", "-c", 'eval "$1"; echo "$KAFKA_BOOTSTRAP_SERVERS"; echo "$REDIS_URL"', "_", exports],
                         capture_output=True, text=True, check=True).stdout.split()
    return {"KAFKA_BOOTSTRAP_SERVERS": out[0], "REDIS_URL": out[1]}


def test_up_env_status_down(tmp_path: Path) -> None:
    # `make` puts a kcat into the venv that uses a librdkafka new enough for the embedded broker.
    kcat = shutil.which("kcat", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    assert kcat, "kcat is missing: `make test` installs it (Debian package kcat)"
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
        assert status.stdout.count("running") == 2
        recorded = [int(line.split("pid ")[1].split()[0]) for line in status.stdout.splitlines()]
    finally:
        down = dev(state, "down")
    assert down.returncode == 0, down.stderr
    for pid in recorded:
        assert not Path(f"/proc/{pid}").exists() or b"zombie" in Path(f"/proc/{pid}/status").read_bytes().lower()
    after = dev(state, "status")
    assert after.returncode == 3
    assert "not running" in after.stdout


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
