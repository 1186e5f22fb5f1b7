"""Running one `processor bench` variant: fill the source, start the variant's process, count its outputs,
read /proc and the worker's /metrics, and turn it all into a ``Row``.

Completion is measured, never slept for: a reader counts the records on the variant's output topic (by
consuming it, because the embedded broker's ListOffsets(latest) is not the log end when producers batch).
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition

from processor.bench.proc import CLOCK_TICKS_PER_SECOND, SpeedProbe, cpu_ticks, peak_rss_kb, read_json
from processor.bench.report import FAILED, OK, Row, loop_speed, percentile
from processor.bench.stall import StallWatch, loop_count, own_count, progress_path
from processor.config import Settings
from processor.errors import ProcessorError, StackError
from processor.kafka.producer import client_config, ensure_topics
from processor.observability.scrape import scrape

SETTLE_SECONDS = 1.0  # after the N-th output, how long to keep counting so that an extra output shows
STOP_SECONDS = 10.0


class VariantFailed(ProcessorError):
    """A variant's process died, or stopped making progress (``processor.bench.stall``)."""


def event_value(run_id: str, n: int, payload_bytes: int) -> bytes:
    """Event ``n`` of a run: ``{"event_id", "n", "payload"}`` padded to ``payload_bytes`` (or the minimum)."""
    base = {"event_id": f"{run_id}-{n}", "n": n, "payload": ""}
    pad = max(0, payload_bytes - len(orjson.dumps(base)))
    return orjson.dumps({**base, "payload": "x" * pad})


class Deliveries:
    """Delivery reports of records keyed by their event number: timestamps (ms) by number, and failures."""

    def __init__(self, events: int) -> None:
        self.timestamps = [0] * events
        self.failures: list[str] = []

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.failures.append(err.str())
        else:
            self.timestamps[int(msg.key() or b"-1")] = msg.timestamp()[1]


def fill(settings: Settings, topic: str, run_id: str, events: int, payload_bytes: int) -> list[int]:
    """Produce the run's events, keyed by their number; returns each one's record timestamp (ms) by number."""
    delivered = Deliveries(events)
    producer = Producer(client_config(settings, **{"enable.idempotence": True, "linger.ms": 20}))
    for n in range(events):
        while True:
            try:
                producer.produce(topic, value=event_value(run_id, n, payload_bytes), key=str(n).encode(),
                                 on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(60) or delivered.failures:
        raise StackError(f"could not fill {topic}: {delivered.failures[:1] or 'flush timed out'}")
    return delivered.timestamps


class OutputReader:
    """Reads a topic from the beginning: counts every record and the distinct key numbers, and keeps the
    key number and timestamp (and with ``keep_values`` the value) of every ``keep_every``-th record."""

    def __init__(
        self, settings: Settings, topic: str, partitions: int, *, keep_values: bool = False, keep_every: int = 1,
        fetch_wait_ms: int = 100,
    ) -> None:
        # The time a record is seen ends a variant's run (``seen_ms``). Real Kafka answers a waiting fetch
        # as soon as records arrive, so the wait costs it nothing. Tansu answers an empty fetch after half
        # the wait (up to 50 ms on a run of seconds) and, worse, stops assembling a Fetch at its max wait:
        # with 5 ms, on a partition of small batches (a slow producer's), each Fetch brought back a few
        # records and the reader fell ever further behind (20 000 one-record batches: 4 541 read in 120 s;
        # with 100 ms, 50 000 in 1.7 s). Measured with a plain consumer; a Tansu workaround.
        self._consumer = Consumer(client_config(settings, **{
            "group.id": f"{topic}.reader", "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": fetch_wait_ms,
        }))
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        self._keep_values = keep_values
        self._keep_every = keep_every
        self.count = 0
        self.numbers: set[int] = set()  # distinct key numbers seen
        self.records: list[tuple[int, int]] = []  # (event number, output timestamp ms); -1: a foreign key
        self.values: list[bytes] = []  # with keep_values, in the order of ``records``
        # When each kept record was seen here: the broker has it and consumers can read it. Producers set
        # the record timestamps (the embedded broker ignores LogAppendTime), at produce() rather than when
        # the broker has the record, so the seen time is what ends a run.
        self.seen_ms: list[float] = []

    def poll(self, timeout_seconds: float) -> None:
        messages = self._consumer.consume(num_messages=1000, timeout=timeout_seconds)
        now_ms = time.time() * 1000
        for msg in messages:
            if msg.error():
                continue
            try:
                n = int(msg.key() or b"-1")
            except ValueError:
                n = -1  # not one of ours: counted, never distinct
            if n >= 0:
                self.numbers.add(n)
            self.count += 1
            if self.count % self._keep_every:
                continue
            self.records.append((n, msg.timestamp()[1]))
            self.seen_ms.append(now_ms)
            if self._keep_values:
                self.values.append(msg.value() or b"")

    def catch_up(self, quiet_seconds: float = 1.0) -> None:
        """Poll until nothing new has come for ``quiet_seconds``."""
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < quiet_seconds:
            before = self.count
            self.poll(0.1)
            if self.count != before:
                quiet_since = time.monotonic()

    def close(self) -> None:
        self._consumer.close()


@dataclass(frozen=True)
class Launch:
    """How to start one variant and where it reports: ``output`` None for a consume-only variant,
    ``result`` None for a worker (its processing times come from ``metrics_url``)."""

    key: str
    label: str
    argv: Sequence[str]
    env: Mapping[str, str]
    log: Path
    mark: Path
    output: str | None = None
    result: Path | None = None
    metrics_url: str | None = None
    topology: str | None = None
    note: str = ""


@dataclass(frozen=True)
class Run:
    """What every variant of one bench run shares."""

    settings: Settings
    run_id: str
    source: str
    events: int
    partitions: int
    input_timestamps: Sequence[int]
    timeout_seconds: float
    # The fetch wait of the latency and retry-path runs' workers (and of the broker-alone run's reader);
    # None: the settings' own.
    paced_fetch_wait_ms: int | None = None
    # The embedded broker's and Redis's processes, when the bench started them (the latency run samples their CPU).
    broker_pid: int | None = None
    redis_pid: int | None = None
    worker_env: Mapping[str, str] = dataclasses.field(default_factory=dict)  # more environment for (c)'s workers

    @property
    def paced_fetch_wait(self) -> int:
        return self.paced_fetch_wait_ms or self.settings.kafka_fetch_max_wait_ms


@dataclass(frozen=True)
class Sample:
    """What one variant's run left: its mark, its outputs, and its process as it was when done."""

    first_ticks: int
    first_ms: float
    records: Sequence[tuple[int, int]]
    end_ms: float | None  # when the N-th output was seen on the output topic
    end_ticks: int
    peak_rss_kb: int
    processing: tuple[float | None, float | None]
    result: Mapping[str, object] | None
    cpu_speed: Sequence[tuple[float, float]] = ()  # the speed probe's samples while it ran


def run_variant(run: Run, launch: Launch) -> Sample:
    """Start ``launch``, wait until it has handled every event, sample it, stop it."""
    if launch.output is not None:
        ensure_topics(run.settings, [launch.output], run.partitions, run.settings.topic_replication_factor)
    with launch.log.open("wb") as log:
        proc = subprocess.Popen(list(launch.argv), env=dict(launch.env), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log)
    reader = OutputReader(run.settings, launch.output, run.partitions) if launch.output else None
    probe = SpeedProbe(launch.log.with_suffix(".speed"))
    progress_file = progress_path(launch.result) if launch.result is not None else None
    try:
        deadline = time.monotonic() + run.timeout_seconds
        watch = StallWatch(time.monotonic())
        while not _done(run, launch, reader):
            if reader is not None:
                reader.poll(0.1)
            else:
                time.sleep(0.1)
            if proc.poll() is not None:
                raise VariantFailed(f"exited with status {proc.returncode}; {_where(launch)}")
            # Outputs seen are the progress; a consume-only variant's own count is (read from its file).
            seen = reader.count if reader is not None else loop_count(progress_file) if progress_file else 0
            stalled = watch.check(seen, time.monotonic())
            if stalled is None and time.monotonic() > deadline:
                stalled = f"not done after {run.timeout_seconds:.0f}s"
            if stalled is not None:
                outputs = f"{reader.count} of {run.events} outputs read" if reader is not None else "no output topic"
                own = own_count(progress_file, launch.metrics_url, launch.topology)
                raise VariantFailed(f"{stalled}: {outputs}; {own}; {_where(launch)}")
        # Sampled first: reading /metrics afterwards costs the worker CPU that is not the events'.
        end_ticks, rss = cpu_ticks(proc.pid), peak_rss_kb(proc.pid)
        result = read_json(launch.result) if launch.result else None
        if result is not None:
            processing = (_float(result.get("processing_p50_ms")), _float(result.get("processing_p99_ms")))
        else:
            processing = histogram_percentiles(launch, run.events)
        settle = time.monotonic() + SETTLE_SECONDS
        while reader is not None and time.monotonic() < settle:
            reader.poll(0.1)
        mark = read_json(launch.mark)
        assert mark is not None  # _done waited for it
        return Sample(
            first_ticks=int(mark["cpu_ticks"]), first_ms=float(mark["wall"]) * 1000,
            records=list(reader.records) if reader is not None else [],
            end_ms=reader.seen_ms[run.events - 1] if reader is not None else None, end_ticks=end_ticks, peak_rss_kb=rss,
            processing=processing, result=result, cpu_speed=probe.stop(),
        )
    finally:
        probe.stop()
        stop(proc)
        if reader is not None:
            reader.close()


def _where(launch: Launch) -> str:
    return f"see {launch.log}"


def _done(run: Run, launch: Launch, reader: OutputReader | None) -> bool:
    if not launch.mark.exists():
        return False
    if launch.result is not None and not launch.result.exists():
        return False
    return reader is None or reader.count >= run.events


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def histogram_percentiles(
    launch: Launch, events: int, timeout_seconds: float = 15.0
) -> tuple[float | None, float | None]:
    """p50/p99 of the worker's processor_processing_seconds, once it has observed every event (it observes
    after the outputs are acknowledged and the ids marked done, a little after the N-th output exists)."""
    assert launch.metrics_url is not None
    assert launch.topology is not None
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            sample = scrape(launch.metrics_url)
        except OSError:
            sample = None
        done = sample is not None and sample.value("processor_processing_seconds_count",
                                                   topology=launch.topology) >= events
        if sample is not None and (done or time.monotonic() > deadline):
            p50, p99 = (seconds_to_ms(sample.quantile(q, "processor_processing_seconds", topology=launch.topology))
                        for q in (0.5, 0.99))
            return p50, p99
        if time.monotonic() > deadline:
            return None, None
        time.sleep(0.2)


def seconds_to_ms(seconds: float) -> float | None:
    """Milliseconds, or None for a quantile of nothing (NaN)."""
    return None if math.isnan(seconds) else seconds * 1000


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL if it has not exited within STOP_SECONDS."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure(run: Run, launch: Launch) -> Row:
    """Run one variant and measure it (see ``Row``); a failure becomes a FAILED row, not an exception."""
    try:
        sample = run_variant(run, launch)
    except VariantFailed as exc:
        return Row(launch.key, launch.label, status=FAILED, note=str(exc))
    records, first_ms = sample.records, sample.first_ms
    if sample.end_ms is not None:
        # Seeing the N-th output ends the run; later ones are extras (they count against "exactly N").
        end_ms = sample.end_ms
        events, distinct = len(records), len({n for n, _ in records if n >= 0})
    else:
        assert sample.result is not None
        end_ms = float(str(sample.result["last_wall"])) * 1000
        events = distinct = int(str(sample.result["count"]))
    seconds = max(end_ms - first_ms, 1.0) / 1000
    raw: list[float] = [ts - run.input_timestamps[n] for n, ts in records if 0 <= n < run.events]
    # Every input was written before the variant started, so raw e2e mostly measures how long the records
    # waited for this variant to be started; from the variant's first record on is the drain's own latency.
    clamped: list[float] = [ts - max(run.input_timestamps[n], first_ms) for n, ts in records if 0 <= n < run.events]
    note = launch.note
    if raw and max(raw) <= 0:
        # Quix Streams gives an output its input's timestamp: record timestamps cannot tell its e2e.
        raw = clamped = []
        note = "outputs carry their input's timestamp, so e2e is not measured from record timestamps"
    cpu = (sample.end_ticks - sample.first_ticks) / CLOCK_TICKS_PER_SECOND
    return Row(
        launch.key, launch.label, status=OK, note=note, events=events, distinct=distinct,
        seconds=seconds, events_per_s=run.events / seconds,
        processing_p50_ms=sample.processing[0], processing_p99_ms=sample.processing[1],
        processing_source="histogram" if launch.result is None else "in-loop",
        e2e_p50_ms=percentile(clamped, 0.5), e2e_p99_ms=percentile(clamped, 0.99),
        e2e_raw_p50_ms=percentile(raw, 0.5), e2e_raw_p99_ms=percentile(raw, 0.99),
        peak_rss_mb=sample.peak_rss_kb / 1024, cpu_seconds_per_1k=cpu / run.events * 1000,
        cpu_seconds_total=sample.end_ticks / CLOCK_TICKS_PER_SECOND,
        cpu_speed=loop_speed(sample.cpu_speed, first_ms, end_ms),
    )


def child_env(settings: Settings, extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of a variant process: ours, the run's servers and fetch wait, no tracing unless ``extra``
    says so."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update({
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers, "REDIS_URL": settings.redis_url.reveal(),
        "KAFKA_FETCH_MAX_WAIT_MS": str(settings.kafka_fetch_max_wait_ms), "OTEL_TRACES_EXPORTER": "none",
        "REDIS_MODE": settings.redis_mode, "REDIS_WAIT_REPLICAS": str(settings.redis_wait_replicas),
    })
    env.update(extra)
    return env

