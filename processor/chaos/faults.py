"""Chaos experiments: the faults. Each is a small value that knows how to inject itself while the workload
runs, and writes what it did, when, to the timeline.

Times (``at``) are seconds after the workload starts. Every wait is bounded by the experiment's deadline,
and every process a fault starts belongs to the fleet, which stops it at the end whatever happens.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from processor.chaos.fleet import Fleet
from processor.chaos.record import Timeline
from processor.chaos.stack import Stack
from processor.chaos.workload import Workload
from processor.dev.simulate import set_outage
from processor.errors import StackError


@dataclass
class FaultContext:
    """What a fault may act on."""

    stack: Stack
    fleet: Fleet
    timeline: Timeline
    workload: Workload
    redis_url: str
    deadline: float  # time.monotonic() by which the experiment must be over
    settle: Callable[[float], float]  # waits until the live replicas hold every partition; returns seconds

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise StackError("the experiment ran out of time")
        return left

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, min(seconds, self.remaining())))

    def sleep_until(self, at: float) -> None:
        """Until ``at`` seconds after the workload started."""
        self.sleep(self.workload.started_at + at - time.time())

    def settled(self, what: str) -> None:
        took = self.settle(min(90.0, self.remaining()))
        self.timeline.note(f"{what}: every partition assigned again after {took:.1f}s")

    def finish_workload(self) -> None:
        if not self.workload.join(self.remaining()):
            raise StackError("the workload did not finish producing in time")


@dataclass(frozen=True)
class Fault:
    """Base: a fault that does nothing (the steady state)."""

    crash: bool = field(default=False, init=False)  # kills a process: README's crash windows apply

    @property
    def worker_env(self) -> Mapping[str, str]:
        """Environment the replicas start with (in-process injection)."""
        return {}

    def describe(self) -> str:
        return "none"

    def run(self, ctx: FaultContext) -> None:
        ctx.finish_workload()


@dataclass(frozen=True)
class WorkerEnv(Fault):
    """Injected by the simulated services from the environment, for the whole run (PROCESSOR_SIM_*)."""

    env: Mapping[str, str] = field(default_factory=dict)
    text: str = ""

    @property
    def worker_env(self) -> Mapping[str, str]:
        return self.env

    def describe(self) -> str:
        return self.text

    def run(self, ctx: FaultContext) -> None:
        ctx.timeline.add("inject", f"{self.text} (set in the replicas' environment; in force from the first event)")
        ctx.finish_workload()
        ctx.timeline.heal("the workload ends: no new events meet the fault (retries still may)")


@dataclass(frozen=True)
class KillReplica(Fault):
    """SIGKILL one replica mid-stream; start a replacement ``restart_after`` seconds later."""

    at: float = 5.0
    restart_after: float = 1.0
    crash: bool = field(default=True, init=False)

    def describe(self) -> str:
        return f"SIGKILL a replica {self.at:g}s into the load, a replacement {self.restart_after:g}s later"

    def run(self, ctx: FaultContext) -> None:
        ctx.sleep_until(self.at)
        victim = ctx.fleet.replicas()[0]
        victim.kill()
        ctx.timeline.inject(f"SIGKILL {victim.name} (pid {victim.pid})")
        ctx.sleep(self.restart_after)
        replacement = ctx.fleet.start_replica()
        ctx.timeline.heal(f"started {replacement.name}")
        ctx.finish_workload()
        ctx.settled("after the kill")


@dataclass(frozen=True)
class RollingRestart(Fault):
    """Replace every replica in turn: SIGTERM (graceful), start a new one, wait until it holds partitions."""

    at: float = 3.0

    def describe(self) -> str:
        return f"rolling restart of every replica from {self.at:g}s: SIGTERM, replacement, rebalance, next"

    def run(self, ctx: FaultContext) -> None:
        ctx.sleep_until(self.at)
        old = ctx.fleet.replicas()
        ctx.timeline.inject(f"rolling restart of {len(old)} replicas begins")
        for member in old:
            graceful = member.terminate(min(30.0, ctx.remaining()))
            ctx.timeline.note(f"SIGTERM {member.name}: {'exited cleanly' if graceful else 'had to be killed'}")
            replacement = ctx.fleet.start_replica()
            ctx.timeline.note(f"started {replacement.name}")
            ctx.settled(f"{replacement.name} joined")
        ctx.timeline.heal("rolling restart done")
        ctx.finish_workload()


@dataclass(frozen=True)
class RedisRestart(Fault):
    """Stop Redis gracefully and start it again ``down`` seconds later (append-only file: see chaos_stack)."""

    at: float = 5.0
    down: float = 5.0

    def describe(self) -> str:
        return f"stop Redis (SIGTERM) {self.at:g}s into the load, start it again {self.down:g}s later (AOF on)"

    def run(self, ctx: FaultContext) -> None:
        ctx.sleep_until(self.at)
        ctx.stack.stop_redis()
        ctx.timeline.inject("Redis stopped")
        ctx.sleep(self.down)
        ctx.stack.start_redis()
        ctx.timeline.heal("Redis started again")
        ctx.finish_workload()


@dataclass(frozen=True)
class Pause(Fault):
    """Freeze ``kafka`` or ``redis`` (SIGSTOP / docker compose pause) for ``seconds``."""

    service: str = "redis"
    at: float = 5.0
    seconds: float = 10.0

    def describe(self) -> str:
        return f"pause {self.service} (SIGSTOP) {self.at:g}s into the load for {self.seconds:g}s, then SIGCONT"

    def run(self, ctx: FaultContext) -> None:
        ctx.sleep_until(self.at)
        ctx.stack.pause(self.service)
        ctx.timeline.inject(f"{self.service} paused")
        try:
            ctx.sleep(self.seconds)
        finally:
            ctx.stack.resume(self.service)
        ctx.timeline.heal(f"{self.service} resumed")
        ctx.finish_workload()


async def _set_outage(url: str, service: str, down: bool, slow_ms: int = 0) -> None:
    client = aioredis.Redis.from_url(url, socket_timeout=10)
    try:
        await set_outage(client, service, down, slow_ms)
    finally:
        await client.aclose()


@dataclass(frozen=True)
class DependencyOutage(Fault):
    """A simulated downstream fails every call (``processor.dev.simulate.set_outage``), or with ``slow_ms``
    answers that much slower, then recovers."""

    service: str = "payment-gateway"
    at: float = 4.0
    seconds: float = 10.0
    slow_ms: int = 0

    def _what(self) -> str:
        return f"answers {self.slow_ms} ms slower" if self.slow_ms else "fails 100%"

    def describe(self) -> str:
        return f"{self.service} {self._what()} from {self.at:g}s for {self.seconds:g}s, then recovers"

    def run(self, ctx: FaultContext) -> None:
        ctx.sleep_until(self.at)
        asyncio.run(_set_outage(ctx.redis_url, self.service, True, self.slow_ms))
        ctx.timeline.inject(f"{self.service} {self._what()}")
        try:
            ctx.sleep(self.seconds)
        finally:
            asyncio.run(_set_outage(ctx.redis_url, self.service, False))
        ctx.timeline.heal(f"{self.service} recovered")
        ctx.finish_workload()


@dataclass(frozen=True)
class StopConsumers(Fault):
    """SIGTERM every replica, leave the topology without consumers for ``seconds``, start them again."""

    at: float = 5.0
    seconds: float = 100.0

    def describe(self) -> str:
        return f"stop every replica {self.at:g}s into the load, start them again {self.seconds:g}s later"

    def run(self, ctx: FaultContext) -> None:
        ctx.sleep_until(self.at)
        old = ctx.fleet.replicas()
        for member in old:
            member.begin_stop()
        ctx.timeline.inject(f"SIGTERM to all {len(old)} replicas")
        clean = sum(member.terminate(min(30.0, ctx.remaining())) for member in old)
        ctx.timeline.note(f"{clean} of {len(old)} replicas exited cleanly")
        ctx.sleep(self.seconds)
        for _ in old:
            ctx.fleet.start_replica()
        ctx.timeline.heal(f"started {len(old)} replicas")
        ctx.finish_workload()
        ctx.settled("after the restart")


@dataclass(frozen=True)
class ScaleOutIn(Fault):
    """Add a replica while events flow; once it holds partitions and ``hold`` seconds passed, remove it."""

    at: float = 3.0
    hold: float = 5.0

    def describe(self) -> str:
        return f"scale out by one replica at {self.at:g}s, back in (SIGTERM) {self.hold:g}s after it settles"

    def run(self, ctx: FaultContext) -> None:
        ctx.sleep_until(self.at)
        extra = ctx.fleet.start_replica()
        ctx.timeline.inject(f"scale out: started {extra.name}")
        ctx.settled(f"{extra.name} joined")
        ctx.sleep(self.hold)
        graceful = extra.terminate(min(30.0, ctx.remaining()))
        ctx.timeline.heal(f"scale in: SIGTERM {extra.name} ({'clean exit' if graceful else 'had to be killed'})")
        ctx.settled(f"{extra.name} left")
        ctx.finish_workload()


@dataclass(frozen=True)
class PoisonMix(Fault):
    """No process is touched: the workload itself carries poison records (see ``poison_inputs``)."""

    text: str = "poison records mixed into the load"

    def describe(self) -> str:
        return self.text

    def run(self, ctx: FaultContext) -> None:
        ctx.timeline.inject(f"{self.text}: they arrive with the load")
        ctx.finish_workload()
        ctx.timeline.heal("the last record is produced")
