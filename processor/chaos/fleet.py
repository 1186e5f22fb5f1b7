"""Chaos experiments: the processes under test. Worker replicas (`processor worker`) and a standalone lag
monitor (`processor monitor`), each a child process with its own /metrics port and log file.

The standalone monitor runs beside the replicas as it would in a deployment that must see lag when every
worker is gone: it starts first, so it holds the monitor lease and measures every second for the whole
experiment (the workers' own monitors stand by). Every process is stopped by `Fleet.close`, whatever
happened; a process is only ever signalled by its own pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from processor.dev.servers import free_port
from processor.errors import StackError
from processor.observability.scrape import Scrape, scrape

STOP_TIMEOUT_SECONDS = 30.0
MONITOR_INTERVAL_SECONDS = 1.0


class Member:
    """One child process of the experiment: a worker replica or the monitor."""

    def __init__(self, name: str, role: str, argv: list[str], env: Mapping[str, str], log_dir: Path) -> None:
        self.name = name
        self.role = role
        self.port = free_port()
        self.argv = argv
        self.env = {**env, "PROCESSOR_METRICS_PORT": str(self.port)}
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.ended_at: float | None = None
        self.killed = False
        self._term_sent = False

    @property
    def instance(self) -> str:
        """The ``instance`` label Prometheus would give this process."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.instance}/metrics"

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else -1

    def start(self, cwd: Path) -> Member:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "processor", *self.argv], env=self.env, cwd=cwd,
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.started_at = time.time()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def metrics(self) -> Scrape:
        return scrape(self.url, timeout_seconds=1.0)

    def kill(self) -> None:
        """SIGKILL: no goodbye, no commit, no final flush."""
        if self.alive() and self.proc is not None:
            self.killed = True
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self._ended()

    def begin_stop(self) -> None:
        """SIGTERM without waiting (``terminate`` then waits): so several processes stop at once."""
        if self.alive() and self.proc is not None and not self._term_sent:
            self._term_sent = True
            self.proc.send_signal(signal.SIGTERM)

    def terminate(self, timeout_seconds: float = STOP_TIMEOUT_SECONDS) -> bool:
        """SIGTERM and wait for a graceful exit; SIGKILL after the timeout. True when it exited by itself."""
        graceful = True
        self.begin_stop()
        if self.alive() and self.proc is not None:
            try:
                self.proc.wait(timeout_seconds)
            except subprocess.TimeoutExpired:
                graceful = False
                self.proc.kill()
                self.proc.wait()
        self._ended()
        return graceful

    def _ended(self) -> None:
        if self.ended_at is None and self.proc is not None:
            self.ended_at = time.time()

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Fleet:
    """Every process an experiment started, in start order (stopped ones included, for the record)."""

    def __init__(self, topology_module: str, env: Mapping[str, str], log_dir: Path, cwd: Path) -> None:
        self.topology_module = topology_module
        self.env = {**os.environ, **env}
        self.log_dir = log_dir
        self.cwd = cwd
        self.members: list[Member] = []
        self._lock = threading.Lock()
        self._replicas_started = 0

    def snapshot(self) -> list[Member]:
        with self._lock:
            return list(self.members)

    def replicas(self, alive_only: bool = True) -> list[Member]:
        return [m for m in self.snapshot() if m.role == "worker" and (m.alive() or not alive_only)]

    def start_monitor(self) -> Member:
        argv = ["monitor", self.topology_module, "--interval", str(MONITOR_INTERVAL_SECONDS)]
        return self._add(Member("monitor", "monitor", argv, self.env, self.log_dir))

    def start_replica(self, extra_env: Mapping[str, str] | None = None) -> Member:
        self._replicas_started += 1
        env = {**self.env, **(extra_env or {})}
        name = f"worker-{self._replicas_started}"
        return self._add(Member(name, "worker", ["worker", self.topology_module], env, self.log_dir))

    def _add(self, member: Member) -> Member:
        member.start(self.cwd)
        with self._lock:
            self.members.append(member)
        return member

    def close(self) -> None:
        """Stop every process still running: SIGTERM to all first, then wait for each."""
        members = [m for m in self.snapshot() if m.alive()]
        for member in members:
            with contextlib.suppress(ProcessLookupError):
                member.begin_stop()
        for member in members:
            member.terminate()


def assigned_partitions(member: Member, handlers: list[str]) -> dict[str, int]:
    """Partitions each handler of ``member`` holds now (0 when its /metrics does not answer)."""
    try:
        s = member.metrics()
    except OSError:
        return dict.fromkeys(handlers, 0)
    return {h: int(s.value("processor_assigned_partitions", handler=h)) for h in handlers}


def wait_settled(fleet: Fleet, partitions: Mapping[str, int], timeout_seconds: float) -> float:
    """Wait until the live replicas together hold every partition of every handler's consumer group
    (``partitions``: handler -> source and retry partitions), each replica holding some; returns the
    seconds it took. A replica that exits meanwhile is an error."""
    started = time.monotonic()
    deadline = started + timeout_seconds
    handlers = list(partitions)
    while True:
        for member in fleet.replicas(alive_only=False):
            if member.ended_at is None and not member.alive():
                code = member.proc.returncode if member.proc is not None else "?"
                raise StackError(f"{member.name} exited ({code}): {member.tail()}")
        held = [assigned_partitions(m, handlers) for m in fleet.replicas()]
        if held and all(sum(h[name] for h in held) == partitions[name] and all(h[name] > 0 for h in held)
                        for name in handlers):
            return time.monotonic() - started
        if time.monotonic() > deadline:
            raise StackError(f"replicas did not settle within {timeout_seconds:.0f}s (assigned: {held})")
        time.sleep(0.5)


def wait_serving(member: Member, timeout_seconds: float) -> None:
    """Wait until ``member`` serves /metrics."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if not member.alive():
            code = member.proc.returncode if member.proc is not None else "?"
            raise StackError(f"{member.name} exited ({code}) at start: {member.tail()}")
        try:
            member.metrics()
            return
        except OSError:
            time.sleep(0.2)
    raise StackError(f"{member.name} did not serve {member.url} within {timeout_seconds:.0f}s")
