"""`processor bench --latency`: the pipeline (c) fed at a fixed rate, and its retry path.

In the throughput runs every input was written before the variant started, so their end-to-end times
measure a backlog draining. Here a fresh source is produced to at a steady rate while the worker runs:

- the latency run, at half of (c)'s measured maximum (``LATENCY_SHARE``): output timestamp minus input timestamp is the
  latency an event sees under a sustainable load; before it, the same load through the broker alone;
- the retry-path run, at 5% of that maximum (``RETRY_PATH_SHARE`` in processor.bench.command says why): every
  first attempt fails, so every event waits out the retry tier's delay; the handler reports the tier's
  due time and when it started, so the run counts events started before they were due (there must be
  none) and how late after the due time the rest started.
"""

from __future__ import annotations

import gc
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson
from confluent_kafka import Producer

from processor.bench.launch import worker_launch
from processor.bench.proc import CpuSampler, SpeedProbe, cpu_contention, cpu_share_between, cpu_snapshot
from processor.bench.report import PIPELINE, LatencyResult, RetryPathResult, loop_speed, percentile
from processor.bench.run import (
    Deliveries,
    Launch,
    OutputReader,
    Run,
    VariantFailed,
    event_value,
    histogram_percentiles,
    seconds_to_ms,
    stop,
)
from processor.bench.stall import StallWatch, own_count
from processor.bench.topology import RETRY_DELAY
from processor.errors import StackError
from processor.kafka.producer import client_config, ensure_topics
from processor.observability.scrape import scrape
from processor.topology.retry import parse_duration

READY_SECONDS = 90.0
# The first seconds of a paced run measure the worker getting going (its first fetches and batches, the
# first seconds of the broker's new topic), not its steady state: their events are left out of the
# percentiles (and counted in the exactly-once check all the same).
WARM_UP_SECONDS = 2.0
# The paced runs take e2e from the output records' timestamps, never from when the bench sees them, so
# their output readers need no short fetch wait; with one (5 ms) the embedded broker answered hundreds of
# empty fetches a second, CPU taken from the worker and broker being measured on the same two cores.
PACED_READER_WAIT_MS = 100
LOOP_LAG = "processor_event_loop_lag_seconds"


@dataclass
class PacedWorker:
    """A worker on a fresh source, its output reader, and its process."""

    launch: Launch
    proc: subprocess.Popen[bytes]
    reader: OutputReader
    source: str

    def wait_outputs(self, events: int, timeout_seconds: float) -> None:
        deadline = time.monotonic() + timeout_seconds
        watch = StallWatch(time.monotonic())
        while self.reader.count < events:
            stalled = watch.check(self.reader.count, time.monotonic())
            if stalled is not None or time.monotonic() > deadline or self.proc.poll() is not None:
                exited = self.proc.poll() is not None
                why = stalled or ("exited" if exited else f"not done after {timeout_seconds:.0f}s")
                own = own_count(None, self.launch.metrics_url, self.launch.topology)
                raise VariantFailed(f"{self.launch.label}: {why}: {self.reader.count} of {events} outputs; {own}; "
                                    f"see {self.launch.log}")
            self.reader.poll(0.1)


@contextmanager
def paced_worker(
    run: Run, log_dir: Path, key: str, label: str, *, extra_env: Mapping[str, str] | None = None,
    keep_values: bool = False, keep_every: int = 1,
) -> Iterator[PacedWorker]:
    """Start ``processor worker processor.bench.topology`` on a fresh source and wait for its partitions."""
    source = f"{run.run_id}.{key}.in"
    ensure_topics(run.settings, [source], run.partitions, run.settings.topic_replication_factor)
    launch = worker_launch(key, label, run, log_dir, source=source, extra_env=extra_env)
    assert launch.output is not None
    assert launch.metrics_url is not None
    ensure_topics(run.settings, [launch.output], run.partitions, run.settings.topic_replication_factor)
    with launch.log.open("wb") as log:
        proc = subprocess.Popen(list(launch.argv), env=dict(launch.env), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log)
    reader = OutputReader(run.settings, launch.output, run.partitions, keep_values=keep_values,
                          keep_every=keep_every, fetch_wait_ms=PACED_READER_WAIT_MS)
    try:
        _wait_assigned(launch.metrics_url, run.partitions, proc)
        yield PacedWorker(launch, proc, reader, source)
    finally:
        stop(proc)
        reader.close()


def _warm(seconds: float) -> float:
    return min(WARM_UP_SECONDS, seconds / 5)


def run_latency(run: Run, log_dir: Path, *, rate: float, seconds: float, payload_bytes: int) -> LatencyResult:
    """Produce at ``rate`` for ``seconds`` to a fresh worker; each event's output minus input timestamp.

    Before it, the same load goes through the broker alone (``run_broker_alone``): the floor under any
    consumer's e2e on this broker at this rate. While it runs, the machine's CPU and the worker's waits for
    one are read (``bench_proc.cpu_contention``): on a machine whose cores the broker, Redis and the load
    share with the worker, those waits are part of the e2e, and the report says how large they were.

    The part after warm-up is also cut in three by input time, with the e2e p99 of each third and the CPU
    of each process on the cores meanwhile: the worker, the broker and Redis (when they are the bench's
    own) and this process's load. Tansu's fetch lists every batch its partition holds, so a run at a fixed
    rate costs it more with every second, and a p99 that grows third by third with it is the broker's
    growth, not the worker's."""
    events = max(1, int(rate * seconds))
    wait = run.paced_fetch_wait
    broker_p50, broker_p99 = run_broker_alone(run, rate=rate, seconds=seconds, payload_bytes=payload_bytes)
    with paced_worker(run, log_dir, f"{PIPELINE}-lat", "processor pipeline at a fixed rate",
                      extra_env={"KAFKA_FETCH_MAX_WAIT_MS": str(wait)}) as worker:
        pids = {"worker": worker.proc.pid, "broker": run.broker_pid, "redis": run.redis_pid, "load": os.getpid()}
        samplers = {name: CpuSampler(pid) for name, pid in pids.items() if pid is not None}

        def sample_cpu() -> None:
            for sampler in samplers.values():
                sampler.sample()

        def between(seconds: float) -> None:
            worker.reader.poll(seconds)
            sample_cpu()

        before = cpu_snapshot(worker.proc.pid)
        url, topology = worker.launch.metrics_url, worker.launch.topology
        assert url is not None
        assert topology is not None
        loop_before = scrape(url)
        probe = SpeedProbe(log_dir / f"{PIPELINE}-lat.speed")
        try:
            inputs, achieved = produce_paced(run, worker.source, events, rate, payload_bytes, between)
        finally:
            speed = probe.stop()
        sample_cpu()
        worker.wait_outputs(events, run.timeout_seconds)
        contention = cpu_contention(before, cpu_snapshot(worker.proc.pid))
        loop_after = scrape(url)
        loop_p50, loop_p99 = (seconds_to_ms(loop_after.quantile(q, LOOP_LAG, since=loop_before, topology=topology))
                              for q in (0.5, 0.99))
        p50, p99 = histogram_percentiles(worker.launch, events)
        steady = min(inputs) + _warm(seconds) * 1000
        end = max(inputs)
        by_third: tuple[list[float], ...] = ([], [], [])
        for n, ts in worker.reader.records:
            if 0 <= n < events and inputs[n] >= steady:
                by_third[third_of(inputs[n], steady, end)].append(ts - inputs[n])
        e2e = [*by_third[0], *by_third[1], *by_third[2]]
        return LatencyResult(
            target_rate=rate, achieved_rate=achieved, events=worker.reader.count,
            distinct=len(worker.reader.numbers), e2e_p50_ms=percentile(e2e, 0.5), e2e_p99_ms=percentile(e2e, 0.99),
            processing_p50_ms=p50, processing_p99_ms=p99, seconds=seconds, warm_up_seconds=_warm(seconds),
            broker_p50_ms=broker_p50, broker_p99_ms=broker_p99, machine_busy_share=contention.busy,
            worker_main_thread_wait_share=contention.waited, worker_main_thread_run_share=contention.ran,
            loop_lag_p50_ms=loop_p50, loop_lag_p99_ms=loop_p99,
            e2e_p99_by_third_ms=tuple(percentile(part, 0.99) for part in by_third),
            cpu_by_third={
                name: tuple(None if name not in samplers else
                            cpu_share_between(samplers[name].samples, start / 1000, stop / 1000)
                            for start, stop in split_in_thirds(steady, end))
                for name in pids
            },
            cpu_speed=loop_speed(speed, steady, end),
        )


def split_in_thirds(start: float, end: float) -> tuple[tuple[float, float], ...]:
    """``start`` to ``end`` cut in three equal spans."""
    step = (end - start) / 3
    return tuple((start + i * step, start + (i + 1) * step) for i in range(3))


def third_of(t: float, start: float, end: float) -> int:
    """Which of ``split_in_thirds(start, end)`` holds ``t`` (0, 1 or 2; ``end`` is in the last)."""
    if end <= start:
        return 0
    return min(2, max(0, int(3 * (t - start) / (end - start))))


def run_broker_alone(run: Run, *, rate: float, seconds: float, payload_bytes: int) -> tuple[float | None, float | None]:
    """p50/p99 of one trip through the broker under the latency run's load, with no worker: produced at
    ``rate`` to a fresh topic and read by a plain confluent-kafka consumer with the paced worker's fetch wait.

    A run of its own, not a second reader of the worker's inputs: on the embedded broker a fetch costs time
    in proportion to the records its partitions hold, so a reader beside the worker loaded the broker more
    with every second of the run, and the worker's e2e with it (four alternating pairs at 15k events/s: p99
    41-76 ms without that reader, 36-160 ms with it)."""
    events = max(1, int(rate * seconds))
    topic = f"{run.run_id}.{PIPELINE}-broker.in"
    ensure_topics(run.settings, [topic], run.partitions, run.settings.topic_replication_factor)
    reader = OutputReader(run.settings, topic, run.partitions, fetch_wait_ms=run.paced_fetch_wait)
    try:
        inputs, _ = produce_paced(run, topic, events, rate, payload_bytes, reader.poll)
        reader.catch_up()
    finally:
        reader.close()
    steady = min(inputs) + _warm(seconds) * 1000
    hop = [seen - ts for (n, ts), seen in zip(reader.records, reader.seen_ms, strict=True)
           if 0 <= n < events and ts >= steady]
    return percentile(hop, 0.5), percentile(hop, 0.99)


def run_retry_path(run: Run, log_dir: Path, *, rate: float, seconds: float, payload_bytes: int) -> RetryPathResult:
    """Every first attempt fails: measure when each event's second attempt started against its due time."""
    events = max(1, int(rate * seconds))
    with paced_worker(run, log_dir, f"{PIPELINE}-retry", "processor retry path at a fixed rate",
                      extra_env={"PROCESSOR_BENCH_FAIL_FIRST": "1",
                                 "KAFKA_FETCH_MAX_WAIT_MS": str(run.paced_fetch_wait)},
                      keep_values=True) as worker:
        inputs, achieved = produce_paced(run, worker.source, events, rate, payload_bytes, worker.reader.poll)
        worker.wait_outputs(events, run.timeout_seconds + parse_duration(RETRY_DELAY))
        steady = min(inputs) + _warm(seconds) * 1000
        lateness = []
        early = 0
        for (n, _), value in zip(worker.reader.records, worker.reader.values, strict=True):
            document = orjson.loads(value)
            late = float(document["started_ms"] - document["due_ms"])
            early += late < 0  # every event counts here, warm-up or not
            if 0 <= n < events and inputs[n] >= steady:
                lateness.append(late)
        return RetryPathResult(
            target_rate=rate, achieved_rate=achieved, events=worker.reader.count,
            distinct=len(worker.reader.numbers), delay_seconds=parse_duration(RETRY_DELAY),
            early=early, lateness_p50_ms=percentile(lateness, 0.5), lateness_p99_ms=percentile(lateness, 0.99),
            lateness_max_ms=max(lateness, default=None), seconds=seconds, warm_up_seconds=_warm(seconds),
        )


def _wait_assigned(url: str, partitions: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise VariantFailed(f"paced worker exited with status {proc.returncode}")
        try:
            if scrape(url).value("processor_assigned_partitions") >= partitions:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise VariantFailed(f"paced worker had no partitions after {READY_SECONDS:.0f}s")


def produce_paced(
    run: Run, source: str, events: int, rate: float, payload_bytes: int, between: Callable[[float], None]
) -> tuple[list[int], float]:
    """Produce ``events`` at ``rate`` per second, calling ``between(seconds)`` in the gaps (it may block that
    long: reading outputs, sampling); returns the input timestamps by event number and the rate achieved."""
    delivered = Deliveries(events)
    producer = paced_producer(run)
    # The collector off while producing: its full collections (the readers' records pile up) stopped this loop
    # for up to 45 ms at 11k events/s, and a burst followed, not the fixed rate the run promises; without them
    # the longest gap was 10-17 ms. Reference counting frees what the loop drops; cycles wait for gc.enable().
    gc.collect()
    gc.disable()
    try:
        started = time.monotonic()
        sent = 0
        while sent < events:
            due = min(events, int((time.monotonic() - started) * rate) + 1)
            while sent < due:
                try:
                    producer.produce(source, value=event_value(f"{run.run_id}-{source}", sent, payload_bytes),
                                     key=str(sent).encode(), on_delivery=delivered)
                except BufferError:
                    break  # the local queue is full: poll, and produce the rest on the next turn
                sent += 1
            producer.poll(0)
            between(0.002)
        achieved = events / max(time.monotonic() - started, 1e-3)
    finally:
        gc.enable()
    _flush(producer, delivered, source)
    return delivered.timestamps, achieved


def paced_producer(run: Run) -> Producer:
    """The producer of a paced run's inputs, warmed up: it has delivered one record (to the run's warm-up
    topic), so that the run's clock does not start during its own start.

    It lingers 5 ms, librdkafka's default, as an upstream service's producer would. A record's timestamp
    is taken at produce(), so its linger counts in its e2e. With linger 0 each record went in a request of
    its own, thousands a second, and the embedded broker's CPU for them slowed the worker measured beside it.

    A new idempotent producer holds its first records until the broker has given it a producer id (its first
    delivery: 0.5-1 s on the embedded broker, 1 ms without idempotence), and the paced runs stamp records at
    produce(): every run began that far behind (two runs at 2 000 events/s: first output 1.0 s after the first
    input, against 15-28 ms warmed up), and at half the maximum rate the worker took seconds to drain it. An
    upstream service's producer is long past its start when our worker reads its records."""
    producer = Producer(client_config(run.settings, **{"enable.idempotence": True, "linger.ms": 5}))
    topic = f"{run.run_id}.warm-up"
    ensure_topics(run.settings, [topic], 1, run.settings.topic_replication_factor)
    delivered = Deliveries(1)
    producer.produce(topic, value=b"warm-up", key=b"0", on_delivery=delivered)
    _flush(producer, delivered, topic)
    return producer


def _flush(producer: Producer, delivered: Deliveries, topic: str) -> None:
    if producer.flush(30) or delivered.failures:
        raise StackError(f"paced run: could not produce to {topic}: {delivered.failures[:1] or 'flush timed out'}")
