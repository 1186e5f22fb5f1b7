"""The Faust side: one Faust app (one consumer group) per handler, all run by one worker process.

Faust keeps the group (membership, rebalances, pausing, seeking, commits); its consumer
(processor.kafka.consumer) hands every fetched batch to the handler's partition queues, which run the
pipeline and ack the offsets afterwards. Each handler is its own consumer group so that fan-out handlers
progress, pause and commit independently: one handler's open breaker or backlog never holds back another's.

Every use of Faust and mode by the runtime is here and in processor.kafka.consumer: the rest of the worker
sees ``HandlerApp`` and ``run_apps``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import faust
import mode
from faust.types import TP
from mode.utils.logging import redirect_stdouts

from processor.config import Settings
from processor.kafka.consumer import BatchConsumer, BatchTransport
from processor.runtime.partitions import PartitionQueues
from processor.runtime.records import InRecord

# Measured on the embedded broker: the group join is as slow as the session timeout allows (Tansu holds a
# JoinGroup for half of it). 10 s with a 1 s heartbeat keeps failure detection fast and safe on real Kafka too.
FAUST_SETTINGS: Mapping[str, Any] = {
    "value_serializer": "raw",
    "key_serializer": "raw",
    "web_enabled": False,
    "topic_disable_leader": True,
    "stream_wait_empty": False,  # the partition queues ack; held retry records must not block a rebalance
    "consumer_auto_offset_reset": "earliest",
    "broker_session_timeout": 10.0,
    "broker_heartbeat_interval": 1.0,
    "broker_commit_interval": 1.0,
    "autodiscover": False,
    "store": "memory://",
}


def faust_credentials(settings: Settings) -> Any:
    """Kafka security settings in Faust's spelling (None for PLAINTEXT)."""
    protocol = settings.kafka_security_protocol
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=settings.kafka_ssl_ca_location)
    if protocol.startswith("SASL_"):
        password = settings.kafka_sasl_password.reveal() if settings.kafka_sasl_password else None
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username, password=password, ssl_context=context,
            mechanism=settings.kafka_sasl_mechanism,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def _records(batch: Sequence[Any]) -> list[InRecord]:
    """aiokafka's ConsumerRecords as InRecords."""
    return [
        InRecord(
            topic=r.topic, partition=r.partition, offset=r.offset, timestamp_ms=r.timestamp or 0, key=r.key,
            value=r.value, headers=dict(r.headers) if r.headers else {},
        )
        for r in batch
    ]


def _tp(tp: Any) -> TP:
    # Faust asserts its own TP type in its active set; messages may carry aiokafka's.
    return TP(tp.topic, tp.partition)


class _OnStop(mode.Service):
    """Runs ``callback`` when its app stops, before the consumer does (it is the app's last child): so
    in-flight batches finish and their acks make the consumer's final commit on a graceful shutdown."""

    def __init__(self, callback: Callable[[], Awaitable[None]]) -> None:
        super().__init__()
        self._callback = callback

    async def on_stop(self) -> None:
        await self._callback()


class _Together(mode.Service):
    """Starts (and stops) several apps at once. Started one after another, each app waits out its own
    group join (about 6 s on the embedded broker) before the next begins."""

    def __init__(self, apps: list[faust.App]) -> None:
        super().__init__()
        self._apps = apps

    async def on_start(self) -> None:
        await asyncio.gather(*(app.maybe_start() for app in self._apps))

    async def on_stop(self) -> None:
        await asyncio.gather(*(app.stop() for app in self._apps))


class HandlerApp:
    """One handler's Faust app: its consumer group over ``topics``, fetched records handed to its partition
    queues (``consume_into``), and the consumer controls those queues use (``pause``, ``resume``, ``ack``)."""

    def __init__(self, group: str, settings: Settings, topics: Sequence[str]) -> None:
        membership = {
            "broker_session_timeout": settings.kafka_session_timeout_ms / 1000,
            # One id serves every handler's group: group.instance.id is unique within a group, not globally.
            "consumer_group_instance_id": settings.group_instance_id,
        }
        self.app = faust.App(
            group, broker=f"kafka://{settings.kafka_bootstrap_servers}",
            broker_credentials=faust_credentials(settings), **{**FAUST_SETTINGS, **membership},
        )
        self.app.transport = BatchTransport(
            self.app.conf.broker_consumer, self.app, sink=self._hand_over,
            fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        )
        self.app.topics.add(self.app.topic(*topics, value_serializer="raw", key_serializer="raw"))
        self._queues: PartitionQueues[Any] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stuck: TP | None = None  # the failpoint's partition, paused again whenever resumed (see stall_fetch)

    def consume_into(
        self, queues: PartitionQueues[Any], on_assigned: Callable[[int], None], on_rebalanced: Callable[[], None],
    ) -> None:
        """Hand every fetched batch to ``queues``; tell them of revoked partitions, ``on_assigned`` how many
        partitions the group gives this member (0 on a revocation), ``on_rebalanced`` of each new assignment."""
        self._queues = queues

        async def on_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
            queues.revoke(list(revoked))
            on_assigned(0)

        async def on_partitions_assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
            self._stuck = None  # a new assignment fetches every partition afresh
            on_assigned(len(assigned))
            on_rebalanced()

        cast(Any, self.app.on_partitions_revoked).connect(on_revoked)
        cast(Any, self.app.on_partitions_assigned).connect(on_partitions_assigned)

    def _hand_over(self, tp: Any, batch: Sequence[Any]) -> None:
        assert self._queues is not None, "consume_into() before the app runs"
        self._queues.put(tp, _records(batch))

    def pause(self, tp: Any) -> None:
        """Stop fetching ``tp``."""
        self.app.consumer.pause_partitions({_tp(tp)})

    def resume(self, tp: Any, next_offset: int) -> None:
        """Fetch ``tp`` again, from ``next_offset`` (the offset its queue expects; -1: where it was)."""
        task = asyncio.get_running_loop().create_task(self._seek_and_resume(_tp(tp), next_offset))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _seek_and_resume(self, tp: TP, next_offset: int) -> None:
        # Faust drops fetched records of a partition paused mid-batch: fetch again from what we expect.
        if next_offset >= 0:
            await self.app.consumer.seek(tp, next_offset)
        self.app.consumer.resume_partitions({tp})
        if tp == self._stuck:
            self.app.consumer.pause_partitions({tp})

    def assigned(self) -> list[TP]:
        """The partitions the group assigns this member now."""
        return sorted(self.app.consumer.assignment())

    async def rejoin(self) -> None:
        """Leave the consumer group and join it again: a new assignment, each partition fetched afresh from
        its committed offset (a member with static membership skips the leave and only rejoins)."""
        thread = cast(Any, self.app.consumer)._thread  # aiokafka's consumer lives on Faust's consumer thread

        async def leave_and_rejoin() -> None:
            coordinator = thread._ensure_consumer()._coordinator
            await coordinator._maybe_leave_group()
            coordinator.request_rejoin()

        # On that thread's loop, as Faust calls it: the coordinator's connection and futures belong there.
        await thread.call_thread(leave_and_rejoin)

    def stall_fetch(self, sticky: bool) -> TP | None:
        """Failpoint (PROCESSOR_FAILPOINT_STALL, for tests and the chaos lab): pause the fetch of this member's
        first partition behind its queues' back, as a consumer that silently stops fetching one. ``sticky``:
        paused again whenever it is resumed, until the next assignment. Returns the partition (None: none)."""
        assigned = self.assigned()
        if not assigned:
            return None
        tp = assigned[0]
        self.app.consumer.pause_partitions({tp})
        self._stuck = tp if sticky else None
        return tp

    def ack(self, tp: Any, records: Sequence[InRecord]) -> None:
        """``records`` of ``tp`` are done: their offsets may be committed."""
        cast(BatchConsumer, self.app.consumer).ack_offsets(tp, [r.offset for r in records])

    def on_stop(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``callback`` on a graceful stop, before the consumer's final commit."""

        async def attach() -> None:
            await self.app.add_runtime_dependency(_OnStop(callback))

        self.app.task(attach)

    def every(self, seconds: float, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``callback`` every ``seconds`` while the app runs."""
        self.app.timer(seconds)(callback)

    def task(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``callback`` once the app has started."""
        self.app.task(callback)


def run_apps(apps: Sequence[HandlerApp], log_level: str, prepare: Callable[[], None]) -> None:
    """Run every app until SIGTERM/SIGINT; ``prepare`` runs last before they start."""
    # The CLI configured logging (processor.observability.logs); mode must not replace it with its own handler.
    # faust.Worker starts its services before its app: _Together has every app running (the first one
    # too, which the worker then finds started) after one group join's time, not one per handler.
    faust_apps = [a.app for a in apps]
    worker = faust.Worker(faust_apps[0], _Together(faust_apps), loglevel=log_level, quiet=True,
                          override_logging=False)
    worker.spinner = None  # at WARNING and above it writes terminal escapes into stdout, even a file
    prepare()
    with redirect_stdouts(severity="WARNING"):  # print() and stray stderr become log records
        worker.execute_from_commandline()
