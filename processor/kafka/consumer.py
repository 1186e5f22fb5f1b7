"""Faust's Kafka consumer with a batch path: fetched records go to the partition queues a batch at a time.

Faust keeps what a worker needs from it: group membership, rebalances, pausing, seeking and committing
acknowledged offsets. What it does per message we do not need: it wraps each record in a message and an
event, and hands each one over through ``wait_first``, which starts four tasks per message. That path
capped a plain Faust agent at about 13k events/s on the bench machine, before any work was done. Here each
fetched batch is handed over in one synchronous call, and acks come back as offsets, a batch at a time,
into the same bookkeeping Faust's own ``ack`` keeps (so its commits, gap handling and rebalance commits
work unchanged).

Faust runs its Kafka client on a thread of its own with an event loop of its own. Here it runs on the
worker's loop: the worker then has one Python thread doing work, not two taking the GIL from each other.
In a profile at a fixed rate, 14-16% of the worker's samples were socket writes, which take microseconds
on loopback: most likely the event loop waiting for the GIL back from the consumer thread after each one.
Measured side by side at fixed rates of 12 000 to 15 000 events/s, p99 end-to-end fell in eight of ten
pairs (``processor bench --latency``). The price: heartbeats now share the loop with the handlers, so a handler that
blocks the loop for longer than the session timeout loses the worker its partitions. Such a handler
already stops everything the worker does on that loop (produces, Redis claims and their leases,
timeouts), and a member that stays in the group while it processes nothing holds its partitions from the
replicas that could; losing them is the signal an SRE wants.

It also sets the fetch wait that Faust hard-codes to 1500 ms. Real Kafka answers a waiting fetch as soon
as records arrive, so the wait only bounds how often an idle consumer asks; the embedded broker answers an
empty fetch only after half its wait even when records arrive meanwhile, which made that half a second the
floor of its end-to-end latency.

This overrides private methods (``_drain_messages``, ``_create_worker_consumer``, the thread's ``start``
and ``_gather_remaining_tasks``, aiokafka's fetcher ``_proc_offset_request``) and writes the fields
Faust's ``ack`` and aiokafka's constructor write;
all are pinned by the version ranges in pyproject.toml and exercised by every integration test.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import errors as aiokafka_errors
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

# (partition, records as aiokafka's ConsumerRecord, in offset order)
RecordSink = Callable[[TP, Sequence[Any]], None]


class _ConsumerOnLoop(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer "thread", served as a task on the worker's own event loop instead of a thread."""

    def __init__(self, consumer: Any, *, loop: Any, **kwargs: Any) -> None:
        super().__init__(consumer, loop=loop, thread_loop=loop, **kwargs)

    async def start(self) -> None:
        # What ServiceThread.start does, with a task where it starts a thread running the same _serve.
        self._thread_started.set()
        self._thread_running = self.parent_loop.create_future()
        # Held for the consumer's life: the loop keeps only a weak reference to a task.
        self._serving = self.parent_loop.create_task(self._serve())
        try:
            await self._thread_running  # set, or failed, by _serve once the consumer has started
        finally:
            self._thread_running = None

    async def _gather_remaining_tasks(self) -> None:
        # In a thread, this cancels what the Kafka client left on the thread's own loop; on the worker's
        # loop it would cancel every task of the worker. The worker's shutdown gathers them instead.
        pass

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = transport.fetch_max_wait_ms  # read when the consumer starts
        start = consumer.start

        async def start_then_patch() -> None:
            await start()  # creates the fetcher
            _refresh_metadata_on_stale_leader(consumer._fetcher, consumer._client)

        consumer.start = start_then_patch
        return consumer


def _refresh_metadata_on_stale_leader(fetcher: Any, client: Any) -> None:
    # aiokafka 0.14 retries a failed offset reset (ListOffsets, for a partition with no committed offset)
    # against the same broker every retry_backoff and never asks for new metadata (its offsets-by-time
    # path does). On Apache Kafka, once that partition's leader moved (a broker paused past its session
    # timeout in the chaos lab), it looped on NOT_LEADER_FOR_PARTITION until metadata's max age (5 min),
    # and the handler's whole fetch with it: 196 events unprocessed when the experiment ended.
    proc_offset_request = fetcher._proc_offset_request

    async def refreshing(node_id: Any, topic_data: Any) -> Any:
        try:
            return await proc_offset_request(node_id, topic_data)
        except aiokafka_errors.KafkaError as err:
            if err.invalid_metadata:
                client.force_metadata_update()
            raise

    fetcher._proc_offset_request = refreshing


class BatchConsumer(faust_aiokafka.Consumer):
    """Hands each fetched batch of a partition to its transport's ``sink``; see the module docstring."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerOnLoop(self, loop=self.loop, beacon=self.beacon)

    async def on_stop(self) -> None:
        # Faust's commit() only waits when another commit is under way, and returns without committing:
        # a periodic commit that began before the last acks made the stop's final commit a no-op, and a
        # graceful stop left up to a batch per partition to be processed again (seen on a 3-broker
        # cluster, where a commit takes long enough to overlap). Wait those out, then commit for real.
        while await self.maybe_wait_for_commit_to_finish():
            pass
        await super().on_stop()

    async def _drain_messages(self, fetcher: Any) -> None:
        sink: RecordSink = self.transport.sink  # type: ignore[attr-defined]
        consumer_stopped = self._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        read_offset = self._read_offset
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                records, _ = await self._wait_next_records(1.0)
                if not records or self.should_stop:
                    continue
                if not self.flow_active:
                    # A rebalance is under way (or just ended: Faust resumes the flow after seeking to the
                    # committed offsets). These records moved the fetch position past them, so dropping
                    # them without a seek back would skip them for good; Faust's own getmany seeks too.
                    await self._seek_back()
                    continue
                # Paused or revoked while the fetch was under way: dropped, fetched again on resume.
                active = self._get_active_partitions()
                for tp, batch in records.items():
                    if not batch or (tp not in active and tp not in self._buffered_partitions):
                        continue
                    last = read_offset[tp]
                    for record in batch:
                        if last is not None and record.offset > last + 1:
                            # Offsets with no record (compaction, transaction markers) must not hold
                            # the commit back: Faust commits past recorded gaps.
                            await self._add_gap(tp, last + 1, record.offset)
                        last = record.offset
                    read_offset[tp] = last
                    sink(tp, batch)
                commit_every = self._commit_every
                if commit_every is not None and self._n_acked >= commit_every:
                    self._n_acked = 0
                    await self.commit()
        except self.consumer_stopped_errors:
            if not self.transport.app.should_stop:
                raise

    async def _seek_back(self) -> None:
        try:
            await self.perform_seek()
        except Exception as exc:  # the rebalance under way seeks the partitions it assigns anyway
            self.log.warning("seeking back to the committed offsets after a fetch during a rebalance: %r", exc)

    def ack_offsets(self, tp: TP, offsets: Sequence[int]) -> None:
        """Acknowledge processed offsets of ``tp``: what ``Consumer.ack`` does per message, for a batch."""
        # Faust's livelock check (every few seconds, per partition) logs an error once a partition with
        # records to read has seen no stream event for stream_processing_timeout; no stream runs here, so
        # a processed batch is what counts as one. A partition stuck that long is still reported.
        self.app.monitor.stream_inbound_time[tp] = time.monotonic()
        with ack_lock:
            committed = self._committed_offset[tp]
            acked_index = self._acked_index[tp]
            acked = self._acked[tp]
            for offset in offsets:
                if (committed is None or offset >= committed) and offset not in acked_index:
                    acked_index.add(offset)
                    acked.append(offset)
                    self._n_acked += 1
            notify(self._waiting_for_ack)


class BatchTransport(faust_aiokafka.Transport):
    """The aiokafka transport, creating a ``BatchConsumer`` that feeds ``sink``."""

    Consumer = BatchConsumer

    def __init__(self, url: Any, app: Any, sink: RecordSink, fetch_max_wait_ms: int) -> None:
        super().__init__(url, app)
        self.sink = sink
        self.fetch_max_wait_ms = fetch_max_wait_ms
