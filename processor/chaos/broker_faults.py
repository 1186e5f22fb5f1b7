"""Chaos experiments: faults done to the brokers of the experiment's own 3-node Kafka cluster.

Each picks its victim by what matters for the workload: the leader of the source topic's partition 0
(the records the load is writing right now), or the active controller. After the fault each waits until
every partition has its full in-sync replica set again and writes how long that took, since "the
restarted broker caught up" is part of what the fault costs.

The cluster runs replication factor 3 with min.insync.replicas 2 (processor.dev.kraft): one broker down
still accepts acks=all writes, so none of these faults may lose an acknowledged record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from processor.chaos.faults import Fault, FaultContext
from processor.errors import StackError

# A broker that stops heartbeating to the controller is fenced after broker.session.timeout.ms (9 s by
# default): a pause past it moves the paused broker's leaderships, a shorter one only stalls them.
BROKER_SESSION_TIMEOUT_SECONDS = 9.0
MOVE_TIMEOUT_SECONDS = 30.0
IN_SYNC_TIMEOUT_SECONDS = 90.0


def _victim(ctx: FaultContext, target: str) -> int:
    if target == "controller":
        return ctx.stack.active_controller()
    return ctx.stack.partition_leader(ctx.workload.topic, 0)


def _wait_moved(ctx: FaultContext, victim: int, target: str) -> None:
    """Wait until the victim no longer leads (the partition, or the quorum); raise if it still does."""
    started = time.monotonic()
    while time.monotonic() - started < min(MOVE_TIMEOUT_SECONDS, ctx.remaining()):
        try:
            now = _victim(ctx, target)
        except StackError:
            now = victim  # no leader at this instant: an election is under way
        if now != victim:
            what = "the quorum elected controller" if target == "controller" else "partition 0's leader is now"
            ctx.timeline.note(f"{what} node {now}, {time.monotonic() - started:.1f}s later")
            return
        time.sleep(0.2)
    raise StackError(f"node {victim} still leads {target} {MOVE_TIMEOUT_SECONDS:.0f}s after the fault")


def _wait_in_sync(ctx: FaultContext, what: str) -> None:
    started = time.monotonic()
    while time.monotonic() - started < min(IN_SYNC_TIMEOUT_SECONDS, ctx.remaining()):
        behind = ctx.stack.under_replicated()
        if behind == 0:
            ctx.timeline.note(f"{what}: every partition fully in sync {time.monotonic() - started:.1f}s later")
            return
        time.sleep(0.5)
    raise StackError(f"{what}: partitions still under-replicated after {IN_SYNC_TIMEOUT_SECONDS:.0f}s")


def _down_and_back(ctx: FaultContext, at: float, back_after: float, target: str,
                   take_down: Callable[[int], None], how: str) -> None:
    ctx.sleep_until(at)
    victim = _victim(ctx, target)
    take_down(victim)
    ctx.timeline.inject(f"broker {victim} {how}")
    _wait_moved(ctx, victim, target)
    ctx.sleep_until(at + back_after)
    ctx.stack.start_broker(victim)
    ctx.timeline.heal(f"broker {victim} started again on its log")
    _wait_in_sync(ctx, f"broker {victim} back")
    ctx.finish_workload()


@dataclass(frozen=True)
class KillBroker(Fault):
    """SIGKILL the source partition's leader (or the active controller); start it again later."""

    target: str = "leader"  # or "controller"
    at: float = 5.0
    restart_after: float = 10.0

    def describe(self) -> str:
        who = "the active controller" if self.target == "controller" else "the leader of the source's partition 0"
        return f"SIGKILL {who} {self.at:g}s into the load; start it again {self.restart_after:g}s later"

    def run(self, ctx: FaultContext) -> None:
        _down_and_back(ctx, self.at, self.restart_after, self.target, ctx.stack.kill_broker,
                       f"SIGKILLed ({self.target})")


@dataclass(frozen=True)
class RestartBroker(Fault):
    """Stop the source partition's leader gracefully (controlled shutdown), start it on its log later."""

    at: float = 5.0
    down: float = 10.0

    def describe(self) -> str:
        return (f"stop the leader of the source's partition 0 (SIGTERM) {self.at:g}s into the load; start it "
                f"again on its log {self.down:g}s later")

    def run(self, ctx: FaultContext) -> None:
        _down_and_back(ctx, self.at, self.down, "leader", ctx.stack.stop_broker, "stopped (controlled shutdown)")


@dataclass(frozen=True)
class RollingBrokerRestart(Fault):
    """Restart every broker in turn, as an upgrade does: SIGTERM, start, wait until in sync, next."""

    at: float = 3.0

    def describe(self) -> str:
        return f"rolling restart of every broker from {self.at:g}s: SIGTERM, start on its log, in sync, next"

    def run(self, ctx: FaultContext) -> None:
        ctx.sleep_until(self.at)
        nodes = sorted(ctx.stack.nodes)
        ctx.timeline.inject(f"rolling restart of {len(nodes)} brokers begins")
        for node in nodes:
            ctx.stack.stop_broker(node)
            ctx.timeline.note(f"broker {node} stopped (controlled shutdown)")
            ctx.stack.start_broker(node)
            _wait_in_sync(ctx, f"broker {node} restarted")
        ctx.timeline.heal("rolling restart of the brokers done")
        ctx.finish_workload()


@dataclass(frozen=True)
class PauseBroker(Fault):
    """SIGSTOP the source partition's leader past the broker session timeout, then SIGCONT."""

    at: float = 5.0
    seconds: float = 15.0

    def describe(self) -> str:
        return (f"SIGSTOP the leader of the source's partition 0 {self.at:g}s into the load for {self.seconds:g}s "
                f"(past the {BROKER_SESSION_TIMEOUT_SECONDS:g}s broker session timeout), then SIGCONT")

    def run(self, ctx: FaultContext) -> None:
        ctx.sleep_until(self.at)
        victim = _victim(ctx, "leader")
        ctx.stack.pause_broker(victim)
        ctx.timeline.inject(f"broker {victim} paused (SIGSTOP)")
        try:
            _wait_moved(ctx, victim, "leader")
            ctx.sleep_until(self.at + self.seconds)
        finally:
            ctx.stack.resume_broker(victim)
        ctx.timeline.heal(f"broker {victim} resumed (SIGCONT)")
        _wait_in_sync(ctx, f"broker {victim} resumed")
        ctx.finish_workload()
