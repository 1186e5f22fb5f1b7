"""Chaos experiments: the servers an experiment runs against, and the faults that can be done to them.

By default every experiment gets an embedded stack of its own (Tansu and redis-server on free ports, in
its report directory), so pausing the broker or restarting Redis never touches anybody else's servers.
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

from processor.dev.servers import (
    ServerProcess,
    _redis_answers,
    _spawn,
    free_port,
    redis_binary,
    start_broker,
    start_redis,
)
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

    def env(self) -> dict[str, str]:
        return {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers, "REDIS_URL": self.redis_url}


def external_endpoints(environ: dict[str, str] | None = None) -> Endpoints | None:
    """The servers named by the environment, when both are set (then nothing is started)."""
    env = os.environ if environ is None else environ
    bootstrap, redis_url = env.get("KAFKA_BOOTSTRAP_SERVERS"), env.get("REDIS_URL")
    if bootstrap and redis_url:
        return Endpoints(bootstrap, redis_url, external=True)
    return None


def start_persistent_redis(port: int, log: Path, workdir: Path) -> ServerProcess:
    """redis-server that writes every change to an fsynced append-only file in ``workdir`` (see above)."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
            "--appendfsync", "always", "--dir", str(workdir)]
    return _spawn("redis", argv, port, log, lambda address: _redis_answers(f"redis://{address}/0"))


class Stack:
    """The broker and Redis of one experiment; a context manager that stops what it started."""

    def __init__(self, workdir: Path, *, persistent_redis: bool = False, external: Endpoints | None = None) -> None:
        self.workdir = workdir
        self.persistent_redis = persistent_redis
        self._external = external
        self.broker: ServerProcess | None = None
        self.redis: ServerProcess | None = None
        self._redis_port = 0

    @property
    def endpoints(self) -> Endpoints:
        if self._external is not None:
            return self._external
        if self.broker is None or self._redis_port == 0:
            raise StackError("the experiment's stack is not running")
        return Endpoints(self.broker.address, f"redis://127.0.0.1:{self._redis_port}/0", external=False)

    def __enter__(self) -> Stack:
        if self._external is not None:
            return self
        self.broker = start_broker(free_port(), self.workdir / "kafka.log")
        try:
            self._redis_port = free_port()
            self._start_redis()
        except BaseException:
            self.broker.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for server in (self.redis, self.broker):
            if server is not None:
                _signal(server.pid, signal.SIGCONT)  # a paused server cannot act on SIGTERM
                server.stop()

    def _start_redis(self) -> None:
        log, data = self.workdir / "redis.log", self.workdir / "redis"
        start = start_persistent_redis if self.persistent_redis else start_redis
        self.redis = start(self._redis_port, log, data)

    # -- faults -------------------------------------------------------------------------------------------

    def pause(self, service: str) -> None:
        """Freeze ``kafka`` or ``redis`` (SIGSTOP; ``docker compose pause`` on the compose stack)."""
        if self._external is not None:
            compose("pause", service)
        else:
            _signal(self._server(service).pid, signal.SIGSTOP)

    def resume(self, service: str) -> None:
        """Undo ``pause``."""
        if self._external is not None:
            compose("unpause", service)
        else:
            _signal(self._server(service).pid, signal.SIGCONT)

    def stop_redis(self) -> None:
        """Stop Redis gracefully (SIGTERM: it writes its append-only file and exits)."""
        if self._external is not None:
            compose("stop", "redis")
        else:
            self._server("redis").stop()

    def start_redis(self) -> None:
        """Start Redis again on the same port, with the same data directory."""
        if self._external is not None:
            compose("start", "redis")
        else:
            self._start_redis()

    def _server(self, service: str) -> ServerProcess:
        server = {"kafka": self.broker, "redis": self.redis}.get(service)
        if server is None:
            raise StackError(f"no {service} server in this experiment's stack")
        return server


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
