"""`processor bench --latency`: the pipeline (c) fed at a fixed rate, half its measured maximum.

In the throughput runs every input was written before the variant started, so their end-to-end times
measure a backlog draining. Here a fresh source is produced to at a steady rate while the worker runs,
so output timestamp minus input timestamp is the latency an event sees under a sustainable load.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from confluent_kafka import Producer

from processor.bench_launch import worker_launch
from processor.bench_report import PIPELINE, LatencyResult, percentile
from processor.bench_run import Deliveries, OutputReader, Run, VariantFailed, event_value, histogram_percentiles, stop
from processor.errors import StackError
from processor.kafka import client_config, ensure_topics
from processor.scrape import scrape

MAX_SECONDS = 20.0  # produce for at most this long: enough samples for a p99, and a bounded run
READY_SECONDS = 90.0


def run_latency(run: Run, log_dir: Path, *, rate: float, payload_bytes: int) -> LatencyResult:
    """Start a worker on a fresh source, wait for its partitions, produce at ``rate`` and measure."""
    events = max(1, min(run.events, int(rate * MAX_SECONDS)))
    source = f"{run.run_id}.lat.in"
    ensure_topics(run.settings, [source], run.partitions, run.settings.topic_replication_factor)
    launch = worker_launch(f"{PIPELINE}-lat", "processor pipeline at a fixed rate", run, log_dir, source=source)
    assert launch.output is not None
    assert launch.metrics_url is not None
    ensure_topics(run.settings, [launch.output], run.partitions, run.settings.topic_replication_factor)
    with launch.log.open("wb") as log:
        proc = subprocess.Popen(list(launch.argv), env=dict(launch.env), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log)
    reader = OutputReader(run.settings, launch.output, run.partitions)
    try:
        _wait_assigned(launch.metrics_url, run.partitions, proc)
        inputs, achieved = _produce_paced(run, source, events, rate, payload_bytes, reader)
        deadline = time.monotonic() + run.timeout_seconds
        while reader.count < events:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise VariantFailed(f"latency run: {reader.count} of {events} outputs; see {launch.log}")
            reader.poll(0.1)
        p50, p99 = histogram_percentiles(launch, events)
        e2e = [ts - inputs[n] for n, ts in reader.records if 0 <= n < events]
        return LatencyResult(
            target_rate=rate, achieved_rate=achieved, events=reader.count,
            distinct=len({n for n, _ in reader.records if n >= 0}),
            e2e_p50_ms=percentile(e2e, 0.5), e2e_p99_ms=percentile(e2e, 0.99),
            processing_p50_ms=p50, processing_p99_ms=p99,
        )
    finally:
        stop(proc)
        reader.close()


def _wait_assigned(url: str, partitions: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise VariantFailed(f"latency worker exited with status {proc.returncode}")
        try:
            if scrape(url).value("processor_assigned_partitions") >= partitions:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise VariantFailed(f"latency worker had no partitions after {READY_SECONDS:.0f}s")


def _produce_paced(
    run: Run, source: str, events: int, rate: float, payload_bytes: int, reader: OutputReader
) -> tuple[list[int], float]:
    """Produce ``events`` at ``rate`` per second (reading outputs meanwhile); returns the input timestamps by
    event number and the rate achieved."""
    delivered = Deliveries(events)

    # linger.ms 0: a record waits for no batch-mate, so the input timestamp is when it was meant to go.
    producer = Producer(client_config(run.settings, **{"enable.idempotence": True, "linger.ms": 0}))
    started = time.monotonic()
    sent = 0
    while sent < events:
        due = min(events, int((time.monotonic() - started) * rate) + 1)
        while sent < due:
            producer.produce(source, value=event_value(f"{run.run_id}-lat", sent, payload_bytes),
                             key=str(sent).encode(), on_delivery=delivered)
            sent += 1
        producer.poll(0)
        reader.poll(0.002)
    achieved = events / max(time.monotonic() - started, 1e-3)
    if producer.flush(30) or delivered.failures:
        raise StackError(
            f"latency run: could not produce to {source}: {delivered.failures[:1] or 'flush timed out'}"
        )
    return delivered.timestamps, achieved
