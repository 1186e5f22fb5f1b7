"""The baseline variants of `processor bench`, each run as its own process:

    python -m processor.bench.loops KIND SPEC_JSON      KIND: confluent, faust, faust-consume, quix

Each consumes the source topic from the beginning in its own consumer group, decodes every record with
orjson and (except ``faust-consume``) produces it re-encoded, keyed as it came, to its output topic. It
writes a mark at its first record and a result (processing-time percentiles measured in the loop) once it
has handled ``events`` records and flushed its producer, then idles until SIGTERM, so the bench can read
its peak RSS and CPU from /proc while it is still alive. Connection settings come from the environment
(``Settings.load()``), as for a worker.
"""

from __future__ import annotations

import asyncio
import importlib
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from processor.bench.proc import write_json, write_mark
from processor.bench.report import percentile
from processor.bench.stall import progress_path
from processor.config import Settings

CONFLUENT = "confluent"
FAUST = "faust"
FAUST_CONSUME = "faust-consume"
QUIX = "quix"
KINDS = (CONFLUENT, FAUST, FAUST_CONSUME, QUIX)
SESSION_TIMEOUT_MS = 10_000
PROGRESS_EVERY = 1000  # handled records between two writes of the progress file


@dataclass(frozen=True)
class LoopSpec:
    """What one baseline process reads, writes and reports."""

    source: str
    output: str
    group: str
    events: int
    mark_file: str
    result_file: str
    state_dir: str

    def to_json(self) -> str:
        return orjson.dumps(asdict(self)).decode()

    @classmethod
    def from_json(cls, text: str) -> LoopSpec:
        return cls(**orjson.loads(text))


class Tally:
    """Counts handled records, their in-loop processing times and, for a variant that produces, its outputs'
    delivery reports; marks the first record, keeps a progress file for the bench to quote when the
    variant stalls, and writes the result once every record is handled and (``produces``) every output's
    delivery has been reported: a send only enqueues, and a result before the acks would claim outputs the
    broker may never get."""

    def __init__(self, spec: LoopSpec, *, produces: bool = True) -> None:
        self.spec = spec
        self.produces = produces
        self.count = 0
        self.acked = 0
        self.failed = 0
        self.first_error = ""
        self.samples: list[float] = []
        self._marked = False
        self._reported = False

    def first(self) -> None:
        if not self._marked:
            write_mark(Path(self.spec.mark_file))
            self._marked = True

    def done(self, seconds: float) -> None:
        """Count one handled record."""
        self.samples.append(seconds)
        self.count += 1
        if self.count % PROGRESS_EVERY == 0:
            write_json(progress_path(Path(self.spec.result_file)), self._counts())
        self._maybe_report()

    def delivered(self, error: object | None) -> None:
        """Count one output's delivery report (``error`` None: acknowledged by the broker)."""
        if error is None:
            self.acked += 1
        else:
            self.failed += 1
            self.first_error = self.first_error or str(error)
        self._maybe_report()

    def on_future(self, future: asyncio.Future[Any]) -> None:
        """``delivered`` as a done-callback of a send's delivery future (Faust, aiokafka)."""
        self.delivered("cancelled" if future.cancelled() else future.exception())

    def _counts(self) -> dict[str, object]:
        return {"count": self.count, "acked": self.acked, "failed_deliveries": self.failed,
                "first_delivery_error": self.first_error}

    def _maybe_report(self) -> None:
        settled = not self.produces or self.acked + self.failed >= self.spec.events
        if self._reported or self.count < self.spec.events or not settled:
            return
        self._reported = True
        ms = [s * 1000 for s in self.samples[:self.spec.events]]
        write_json(progress_path(Path(self.spec.result_file)), self._counts())
        write_json(Path(self.spec.result_file), {
            **self._counts(), "last_wall": time.time(),
            "processing_p50_ms": percentile(ms, 0.5), "processing_p99_ms": percentile(ms, 0.99),
        })


def _idle_until_terminated() -> None:
    stop = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    while not stop:
        time.sleep(0.1)


def run_confluent(spec: LoopSpec, settings: Settings) -> None:
    """(a) consume -> orjson decode -> produce, with confluent-kafka, committing every second."""
    from confluent_kafka import Consumer, Producer

    from processor.kafka.producer import client_config

    # The worker's session timeout (see FAUST_SETTINGS): the embedded broker holds the first JoinGroup for
    # half of it, and librdkafka's default (45 s) would add 20 s of start-up, outside the timed span anyway.
    consumer = Consumer(client_config(settings, **{
        "group.id": spec.group, "auto.offset.reset": "earliest", "enable.auto.commit": False,
        "session.timeout.ms": SESSION_TIMEOUT_MS,
    }))
    # The same producer settings as the pipeline's DeliveringProducer, so the comparison is about the loop.
    producer = Producer(client_config(settings, **{"enable.idempotence": True, "acks": "all", "linger.ms": 5}))
    consumer.subscribe([spec.source])
    tally = Tally(spec)
    next_commit = time.monotonic() + 1.0
    finished = False
    while not finished:
        for message in consumer.consume(num_messages=500, timeout=0.1):
            if message.error():
                continue
            tally.first()
            started = time.perf_counter()
            value = orjson.dumps(orjson.loads(message.value() or b"null"))
            while True:
                try:
                    producer.produce(spec.output, value=value, key=message.key(),
                                     on_delivery=lambda error, _msg: tally.delivered(error))
                    break
                except BufferError:
                    producer.poll(0.01)  # the local queue is full: let delivery reports drain it
            tally.done(time.perf_counter() - started)
            finished = tally.count >= spec.events
        producer.poll(0)
        if time.monotonic() >= next_commit:
            consumer.commit(asynchronous=True)
            next_commit = time.monotonic() + 1.0
    producer.flush()  # the last delivery report writes the result (Tally)
    consumer.commit(asynchronous=False)
    _idle_until_terminated()
    consumer.close()


def run_faust(spec: LoopSpec, settings: Settings, *, produce: bool) -> None:
    """(b) a plain Faust agent, ``await topic.send()`` per event; (b0) with ``produce=False``, consume only."""
    import faust

    from processor.kafka.faust_app import FAUST_SETTINGS, faust_credentials

    # The worker's Faust settings (session timeout, commit interval, raw serializers): only the loop differs.
    # It lingers 5 ms as (a) and our pipeline's producer do. Faust's default, 0, sent each output as a
    # one-record batch; that is unfair to Faust (a request per record) and, on Tansu, which lists every
    # batch in each Fetch, starved the bench's reader on a slow host (Tansu workaround as well).
    app = faust.App(spec.group, broker=f"kafka://{settings.kafka_bootstrap_servers}",
                    broker_credentials=faust_credentials(settings), producer_linger=0.005, **FAUST_SETTINGS)
    source = app.topic(spec.source, value_serializer="raw", key_serializer="raw")
    output = app.topic(spec.output, value_serializer="raw", key_serializer="raw") if produce else None
    tally = Tally(spec, produces=produce)

    async def passthrough(stream: Any) -> None:
        async for event in stream.events():
            tally.first()
            started = time.perf_counter()
            value = orjson.loads(event.value)
            if output is not None:
                # The send returns aiokafka's delivery future; Faust reports a failed delivery nowhere, so
                # the tally counts the acks and writes the result after the last one.
                sent = await output.send(key=event.key, value=orjson.dumps(value))
                sent.add_done_callback(tally.on_future)  # type: ignore[attr-defined]
            tally.done(time.perf_counter() - started)

    app.agent(source, name=f"{spec.group}.agent")(passthrough)
    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


def run_quix(spec: LoopSpec, settings: Settings) -> None:
    """(e) a Quix Streams pass-through: JSON in, the same JSON out, keyed as it came."""
    # Imported by name: the package is optional and absent from most installs (and from mypy's view).
    quixstreams: Any = importlib.import_module("quixstreams")
    app = quixstreams.Application(
        broker_address=settings.kafka_bootstrap_servers, consumer_group=spec.group, auto_offset_reset="earliest",
        state_dir=str(Path(spec.state_dir) / "quix-state"), loglevel="WARNING",
        consumer_extra_config={"session.timeout.ms": SESSION_TIMEOUT_MS},
    )
    source = app.topic(spec.source, key_deserializer="bytes", value_deserializer="json")
    output = app.topic(spec.output, key_serializer="bytes", value_serializer="json")
    # Quix Streams produces behind its own checkpoints: the bench sees its outputs on the topic.
    tally = Tally(spec, produces=False)
    started = [0.0]

    def begin(value: Any) -> None:
        tally.first()
        started[0] = time.perf_counter()

    def end(value: Any) -> None:
        tally.done(time.perf_counter() - started[0])

    frame = app.dataframe(source)
    frame = frame.update(begin)
    frame = frame.to_topic(output)
    frame = frame.update(end)
    try:
        app.run()
    except TypeError:
        app.run(frame)  # Quix Streams 2.x takes the dataframe


def main(argv: list[str]) -> int:
    """Entry point of a baseline process."""
    kind, spec = argv[0], LoopSpec.from_json(argv[1])
    settings = Settings.load()
    runners: dict[str, Callable[[], None]] = {
        CONFLUENT: lambda: run_confluent(spec, settings),
        FAUST: lambda: run_faust(spec, settings, produce=True),
        FAUST_CONSUME: lambda: run_faust(spec, settings, produce=False),
        QUIX: lambda: run_quix(spec, settings),
    }
    if kind not in runners:
        print(f"bench_loops: unknown kind {kind!r}; expected one of {', '.join(KINDS)}", file=sys.stderr)
        return 2
    runners[kind]()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
