"""`processor bench --guarantee`: Faust's ``exactly_once`` (Kafka transactions) against our default (dedup
in Redis, stored outputs), each SIGKILLed mid-stream and restarted, duplicates counted in both.

Each variant reads the same filled source and, per event, performs a side effect with no idempotency key
(``HINCRBY`` of a Redis hash: one count per run of the handler) and produces one output. Killed once
its outputs cover ``KILL_AT`` of the events, it is started again and runs until every event has an
output. Then: outputs read with ``isolation.level=read_committed`` (what a transactional consumer sees)
per event id, and the side-effect counts. Transactions make outputs exactly-once for read-committed
readers; they cannot undo a side effect outside Kafka, so every event of the aborted transaction runs
again. Needs Apache Kafka (the embedded broker has no transactions).
"""

from __future__ import annotations

import functools
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis
import redis.asyncio
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from processor.bench.run import child_env, fill, stop
from processor.config import Settings
from processor.dev.servers import free_port
from processor.errors import StackError
from processor.kafka.producer import client_config, ensure_topics

KILL_AT = 0.4
FINISH_SECONDS = 180.0
RUNS_KEY_ENV = "PROCESSOR_BENCH_RUNS_KEY"  # the hash the handler counts its runs in (processor.bench.topology)


@dataclass(frozen=True)
class GuaranteeRow:
    """One variant's crash: what a read-committed consumer saw and how often the side effect ran."""

    label: str
    events: int
    lost: int
    duplicate_outputs: int
    duplicate_effects: int
    seconds: float  # from the first start until every event had an output, the kill and restart included
    note: str = ""

    def line(self) -> str:
        return (f"{self.label:<44} {self.events:>7} {self.lost:>5} {self.duplicate_outputs:>11} "
                f"{self.duplicate_effects:>11} {self.seconds:>8.1f}  {self.note}")


HEADER = (f"{'variant (SIGKILL at 40%, restart)':<44} {'events':>7} {'lost':>5} {'dup outputs':>11} "
          f"{'dup effects':>11} {'seconds':>8}")


def _read_committed(settings: Settings, topic: str) -> Counter[str]:
    consumer = Consumer(client_config(settings, **{
        "group.id": f"guarantee-reader-{time.monotonic_ns()}", "enable.auto.commit": False,
        "isolation.level": "read_committed", "enable.partition.eof": True,
    }))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        seen: Counter[str] = Counter()
        ended: set[int] = set()
        deadline = time.monotonic() + 60
        while len(ended) < len(partitions) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                ended.add(msg.partition() or 0)
                continue
            seen[str(orjson.loads(msg.value() or b"{}").get("event_id"))] += 1
        return seen
    finally:
        consumer.close()


def _crash_and_finish(settings: Settings, start: Callable[[], subprocess.Popen[bytes]], output: str,
                      events: int) -> tuple[Counter[str], float, str]:
    started = time.monotonic()
    proc = start()
    note = ""
    try:
        while len(_read_committed(settings, output)) < KILL_AT * events:
            if proc.poll() is not None:
                raise StackError(f"exited ({proc.returncode}) before {KILL_AT:.0%} of the outputs")
            if time.monotonic() - started > FINISH_SECONDS:
                raise StackError(f"under {KILL_AT:.0%} of the outputs after {FINISH_SECONDS:.0f}s")
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc = start()
        seen = _read_committed(settings, output)
        while len(seen) < events and time.monotonic() - started < FINISH_SECONDS:
            time.sleep(1.0)
            seen = _read_committed(settings, output)
        if len(seen) < events:
            note = f"not complete after {FINISH_SECONDS:.0f}s"
        took = time.monotonic() - started
        time.sleep(3.0)  # anything still in flight lands before the count
        return _read_committed(settings, output), took, note
    finally:
        stop(proc)


def measure_guarantees(settings: Settings, run_id: str, events: int, partitions: int, log_dir: Path,
                       progress: Callable[[str], None]) -> list[GuaranteeRow]:
    """Both variants on their own copy of the source; see the module docstring."""
    store = redis.Redis.from_url(settings.redis_url.reveal())
    rows = []
    variants: Sequence[tuple[str, str, Callable[[str, str, str, str], list[str]]]] = (
        ("c", "(c) processor: dedup + stored outputs", _worker_argv),
        ("x", "(x) Faust agent, processing_guarantee=exactly_once", _faust_argv),
    )
    for key, label, argv in variants:
        source, output, runs = f"{run_id}.{key}.in", f"{run_id}.{key}.out", f"{run_id}:{key}:runs"
        ensure_topics(settings, [source, output], partitions, settings.topic_replication_factor)
        fill(settings, source, f"{run_id}-{key}", events, 200)
        progress(f"bench: {label}: {events} events, SIGKILL at {KILL_AT:.0%}")
        env = child_env(settings, {RUNS_KEY_ENV: runs, "PROCESSOR_METRICS_PORT": str(free_port()),
                                   "PROCESSOR_BENCH_NAME": f"{run_id}-{key}", "PROCESSOR_BENCH_SOURCE": source,
                                   "PROCESSOR_BENCH_OUTPUT": output, "PROCESSOR_BENCH_PARTITIONS": str(partitions)})
        log = log_dir / f"guarantee-{key}.log"
        start = functools.partial(_start, argv(source, output, f"{run_id}.{key}", runs), env, log)
        try:
            seen, took, note = _crash_and_finish(settings, start, output, events)
        except StackError as exc:
            rows.append(GuaranteeRow(label, events, events, 0, 0, 0.0, f"FAILED: {exc} (see {log})"))
            continue
        effects = {k: int(v) for k, v in store.hgetall(runs).items()}
        rows.append(GuaranteeRow(
            label, events, lost=events - len(seen), duplicate_outputs=sum(seen.values()) - len(seen),
            duplicate_effects=sum(c - 1 for c in effects.values() if c > 1), seconds=round(took, 1), note=note,
        ))
    return rows


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)


def _worker_argv(source: str, output: str, group: str, runs: str) -> list[str]:
    return [sys.executable, "-m", "processor", "worker", "processor.bench.topology"]


def _faust_argv(source: str, output: str, group: str, runs: str) -> list[str]:
    return [sys.executable, "-m", "processor.bench.guarantee", source, output, group, runs]


def run_faust_exactly_once(source: str, output: str, group: str, runs: str) -> None:
    """The (x) process: a plain Faust agent in exactly_once mode, the side effect, then ``await send()``."""
    import faust

    from processor.kafka.faust_app import FAUST_SETTINGS, faust_credentials

    settings = Settings.load()
    store = redis.asyncio.Redis.from_url(settings.redis_url.reveal())
    app = faust.App(group, broker=f"kafka://{settings.kafka_bootstrap_servers}",
                    broker_credentials=faust_credentials(settings), processing_guarantee="exactly_once",
                    **FAUST_SETTINGS)
    source_topic = app.topic(source, value_serializer="raw", key_serializer="raw")
    output_topic = app.topic(output, value_serializer="raw", key_serializer="raw")

    async def passthrough(stream: Any) -> None:
        async for event in stream.events():
            await store.hincrby(runs, str(orjson.loads(event.value)["event_id"]), 1)
            await output_topic.send(key=event.key, value=event.value)

    app.agent(source_topic, name=f"{group}.agent")(passthrough)
    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    run_faust_exactly_once(*sys.argv[1:5])
