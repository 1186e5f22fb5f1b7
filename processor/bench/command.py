"""`processor bench`: the processor's full pipeline against plain pass-through loops, on the same data.

It fills one source topic with ``events`` JSON events, then runs each variant in turn as a process of its
own (so its RSS and CPU are its own), reading that topic from the beginning in its own consumer group and
writing to its own output topic:

    (a)  confluent-kafka loop: consume -> orjson decode -> produce, committing every second
    (b0) a plain Faust agent that only consumes (Faust's ceiling)
    (b)  a plain Faust agent, ``await topic.send()`` per event
    (c)  ``processor worker processor.bench.topology``: validation, dedup, handler, outputs, metrics
    (d)  (c) with tracing on, 10% sampled, spans sent over OTLP/HTTP (``TRACING_ENV``, processor.bench.otlp)
    (e)  Quix Streams pass-through, when ``quixstreams`` is importable (never installed by the bench)

Each is timed from its first consumed record to its N-th output, counted on its output topic. Without
``KAFKA_BOOTSTRAP_SERVERS`` and ``REDIS_URL`` the bench starts a broker and Redis of its own: one Apache
Kafka node (``--broker kafka``, the default), Tansu (``tansu``), or both in turn (``both``: every variant on
each, and the ratio of each variant's rate on Kafka to its rate on Tansu).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import orjson

from processor.bench import report as br
from processor.bench.launch import loop_launch, worker_launch
from processor.bench.loops import CONFLUENT, FAUST, FAUST_CONSUME, QUIX
from processor.bench.otlp import otlp_collector
from processor.bench.run import Launch, Run, VariantFailed, fill, measure
from processor.config import Settings
from processor.dev.devstack import BrokerKind, DevStack, scratch_stack
from processor.errors import ConfigError
from processor.kafka.producer import ensure_topics

SERVER_SETTINGS = ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL")
T = TypeVar("T")

# (d): what a user turning tracing on would run, with the bench's own collector as the endpoint. A tenth of
# the traces is a common starting ratio; the cost is about linear in it (measured: (d) against (c)).
TRACING_ENV = {
    "OTEL_TRACES_EXPORTER": "otlp",
    "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
    "OTEL_TRACES_SAMPLER_ARG": "0.1",
}
TRACING_NOTE = ("(c) + OTEL_TRACES_SAMPLER=parentbased_traceidratio, _ARG=0.1, OTEL_TRACES_EXPORTER=otlp (HTTP) "
                "to the bench's own endpoint, which counts the spans and discards them")

NOTES = (
    "e2e = output minus input record timestamp, counting from the later of the input's timestamp and the "
    "variant's first record (every input was written before the runs; raw values are in the JSON).",
    "processing: a/b0/b/e in-loop (record in hand to produce()/send() returned); c/d from the worker's "
    "processor_processing_seconds (handler start to outputs acked by the broker; bucket-interpolated).",
    "events/s: N over first record consumed to N-th output seen on the output topic. RSS: the process's "
    "VmHWM. CPU s/1k: its utime+stime over the same span.",
    "loop ms: the CPU's speed over the same span, the p50 of the CPU time a fixed pure-Python loop took in a "
    "process of its own, twice a second (larger is slower: a shared host's other guests and the run's own "
    "processes, through the caches they share, both slow it; it moves from second to second, and a variant's "
    "numbers with it).",
)


# The fetch wait of the latency and retry-path runs' workers on the embedded broker, unless
# KAFKA_FETCH_MAX_WAIT_MS is set: Tansu answers a Fetch that found no records only after half its max wait,
# even when records arrive meanwhile, so with the worker's default (100 ms, for real Kafka, which answers as
# soon as records arrive) an event could wait up to 50 ms for a fetch that real Kafka would have answered at
# once. A paced run's consumers often catch up and find nothing for a moment: A/B runs at 7500/s gave e2e
# p50 45-50 ms with 100, 21-31 ms with 20. Not the soak's: Tansu's cost per fetch grows with its topics, and
# a 10-minute soak with a 20 ms wait had the broker at 100% CPU and every partition stalled after 5 minutes.
EMBEDDED_FETCH_MAX_WAIT_MS = 20


def tansu_latency_note(fetch_max_wait_ms: int) -> str:
    """Measured on Tansu with a plain consumer: a Fetch that finds no records is answered after half its max
    wait even when records arrive meanwhile (as it holds JoinGroup for half the session timeout:
    processor.kafka.faust_app).
    Read in its source (tansu-storage, dynostore.rs): every Fetch lists the partition's batches."""
    return (
        "paced runs on the embedded broker: Tansu answers a Fetch that found no records only after half its max "
        f"wait, even if records arrive meanwhile; the latency and retry-path runs' workers fetched with "
        f"KAFKA_FETCH_MAX_WAIT_MS={fetch_max_wait_ms} (the default, 100, is for real Kafka, which answers as soon "
        f"as records arrive), so up to {fetch_max_wait_ms / 2:g} ms of an event's e2e there is that wait. Tansu "
        "also answers each Fetch by listing every record batch the partition holds, so its cost grows through "
        "a run at a fixed rate: the latency line's broker CPU by third shows by how much."
    )


# The paced runs' rates, as shares of (c)'s measured maximum. The retry path's: every event fails once
# there, and a failure costs several successes (its stack trace, a warning log line, the retry record,
# then the second attempt); 5% of the maximum makes the tier carry what a 5% failure rate at full load
# would send it.
LATENCY_SHARE = 0.5
RETRY_PATH_SHARE = 0.05


@dataclass(frozen=True)
class BenchOptions:
    """What ``processor bench`` runs."""

    events: int = 20_000
    partitions: int = 3
    payload_bytes: int = 200
    json_path: Path | None = None
    latency: bool = False
    state_dir: Path = Path(".processor")
    only: frozenset[str] | None = None  # variant keys to run; None: all of them
    paced_seconds: float = 10.0  # how long the latency and retry-path runs produce
    soak_seconds: float = 0.0  # 0: no soak
    # The embedded broker keeps every record in memory and slows down as its topics grow (its CPU reached
    # 120% late in 10-minute soaks): 2000/s for 10 minutes is what it carried here.
    soak_rate: float = 2000.0
    broker: str = "kafka"  # kafka, tansu or both: the bench's own broker when KAFKA_BOOTSTRAP_SERVERS is unset
    guarantee: bool = False  # instead of the variants: exactly_once against dedup, crashed (processor.bench.guarantee)

    @property
    def timeout_seconds(self) -> float:
        """Per variant, a backstop: start-up plus a very slow 25 events/s. A variant that stops making
        progress fails long before it (``processor.bench.stall``); one that makes it is not cut short
        on a slow host (on a host 5-7x slower than usual, (b) took 420 s for 50 000 events)."""
        return 120.0 + self.events / 25


def missing_servers(environ: Mapping[str, str]) -> list[str]:
    """The server settings absent from ``environ``: the embedded stack stands in for them."""
    return [name for name in SERVER_SETTINGS if not environ.get(name)]


# The label of each variant, in the order they run.
VARIANTS: tuple[tuple[str, str], ...] = (
    (br.PLAIN, "confluent-kafka loop"),
    (br.FAUST_CONSUME, "Faust agent, consume only"),
    (br.FAUST, "Faust agent, await send()"),
    (br.PIPELINE, "processor pipeline"),
    (br.TRACED, "processor + tracing, 10% sampled"),
    (br.QUIX, "Quix Streams"),
)
_LOOP_KINDS = {br.PLAIN: CONFLUENT, br.FAUST_CONSUME: FAUST_CONSUME, br.FAUST: FAUST, br.QUIX: QUIX}


def launch_for(key: str, label: str, run: Run, log_dir: Path) -> Launch:
    """How to start variant ``key`` (not (d): ``measure_traced``); built just before it runs, so that its
    free port is still free."""
    if key == br.PIPELINE:
        return worker_launch(key, label, run, log_dir, source=run.source)
    return loop_launch(_LOOP_KINDS[key], key, label, run, log_dir, output=key != br.FAUST_CONSUME)


def measure_traced(label: str, run: Run, log_dir: Path) -> br.Row:
    """(d): the worker exporting its spans to a collector of the bench's own, which counts them."""
    with otlp_collector() as collector:
        launch = worker_launch(br.TRACED, label, run, log_dir, source=run.source, note=TRACING_NOTE,
                               extra_env={**TRACING_ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint})
        row = measure(run, launch)
    note = f"{row.note}; it received {collector.spans} spans" if row.status == br.OK else row.note
    return dataclasses.replace(row, note=note, spans_exported=collector.spans)


def run_bench(settings: Settings, options: BenchOptions, backend: str = "external servers",
              progress: Callable[[str], None] = lambda line: None,
              paced_fetch_wait_ms: int | None = None, broker_pid: int | None = None,
              redis_pid: int | None = None, worker_env: Mapping[str, str] | None = None) -> br.Report:
    """Fill the source and run every variant against the servers in ``settings``; ``paced_fetch_wait_ms``
    is the latency and retry-path runs' worker fetch wait (None: the settings'), ``broker_pid`` and
    ``redis_pid`` the embedded broker's and Redis's processes (None: not the bench's own); ``worker_env``
    more environment for our workers."""
    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    log_dir = options.state_dir / "bench" / run_id
    log_dir.mkdir(parents=True, exist_ok=True)
    source = f"{run_id}.in"
    ensure_topics(settings, [source], options.partitions, settings.topic_replication_factor)
    progress(f"bench {run_id}: filling {source} with {options.events} events of {options.payload_bytes} B; "
             f"logs in {log_dir}")
    timestamps = fill(settings, source, run_id, options.events, options.payload_bytes)
    run = Run(settings=settings, run_id=run_id, source=source, events=options.events,
              partitions=options.partitions, input_timestamps=timestamps, timeout_seconds=options.timeout_seconds,
              paced_fetch_wait_ms=paced_fetch_wait_ms, broker_pid=broker_pid, redis_pid=redis_pid,
              worker_env=dict(worker_env or {}))
    rows: list[br.Row] = []
    for key, label in VARIANTS:
        if options.only is not None and key not in options.only:
            rows.append(br.Row(key, label, status=br.SKIPPED, note="not selected (--only)"))
            continue
        if key == br.QUIX and importlib.util.find_spec("quixstreams") is None:
            rows.append(br.Row(key, label, status=br.SKIPPED, note="quixstreams is not installed (the bench "
                               "does not install it)"))
            continue
        progress(f"bench {run_id}: running ({key}) {label}")
        rows.append(measure_traced(label, run, log_dir) if key == br.TRACED
                    else measure(run, launch_for(key, label, run, log_dir)))
    notes = list(NOTES)

    def paced(what: str, rate: float, measure_it: Callable[[float], T]) -> T | None:
        progress(f"bench {run_id}: {what} at {rate:.0f} events/s")
        try:
            return measure_it(rate)
        except VariantFailed as exc:
            notes.append(f"{what} FAILED: {exc}")
            return None

    latency = retry_path = soak = None
    seconds, size = options.paced_seconds, options.payload_bytes
    if options.latency:
        from processor.bench.latency import run_latency, run_retry_path

        maximum = next(r for r in rows if r.key == br.PIPELINE).events_per_s
        if not maximum:
            notes.append("latency mode not run: (c) has no measured maximum")
        else:
            latency = paced("latency run", maximum * LATENCY_SHARE, lambda rate: run_latency(
                run, log_dir, rate=rate, seconds=seconds, payload_bytes=size))
            retry_path = paced("retry-path run", maximum * RETRY_PATH_SHARE, lambda rate: run_retry_path(
                run, log_dir, rate=rate, seconds=seconds, payload_bytes=size))
    if options.soak_seconds:
        from processor.bench.soak import run_soak

        soak = paced(f"soak for {options.soak_seconds:.0f}s", options.soak_rate, lambda rate: run_soak(
            run, log_dir, seconds=options.soak_seconds, rate=rate, payload_bytes=size))
    return br.Report(
        events=options.events, partitions=options.partitions, payload_bytes=options.payload_bytes,
        backend=backend, run_id=run_id, rows=tuple(rows), latency=latency, retry_path=retry_path, soak=soak,
        notes=tuple(notes),
    )


# Our pipeline's variants: a run of theirs that did not handle each event once fails the bench. A
# baseline's (a plain loop, Faust, Quix) is reported in its row and spares the exit status: it says
# something about the baseline on this host, nothing about the processor.
OURS = frozenset({br.PIPELINE, br.TRACED})


@dataclass(frozen=True)
class Shortfall:
    """One run that did not handle each event exactly once."""

    run: str
    why: str
    ours: bool  # our pipeline's (c, d and the paced runs, all workers): it fails the bench

    def line(self) -> str:
        verdict = "fails the bench" if self.ours else "a baseline: reported, the exit status is not affected"
        return f"bench: {self.run} incomplete ({verdict}): {self.why}"


def shortfalls(report: br.Report, options: BenchOptions) -> list[Shortfall]:
    """Every variant that ran and did not handle each event exactly once, and every paced run asked for
    that did not (or, the retry path, started an event before its due time)."""
    out = []
    for r in report.rows:
        if r.status == br.SKIPPED or (r.status == br.OK and r.events == r.distinct == report.events):
            continue
        why = r.note if r.status == br.FAILED else f"{r.events} outputs, {r.distinct} distinct of {report.events}"
        out.append(Shortfall(f"({r.key}) {r.label}", why, r.key in OURS))
    paced: list[tuple[str, br.LatencyResult | br.RetryPathResult | br.SoakResult | None]] = []
    if options.latency:
        paced += [("latency run", report.latency), ("retry-path run", report.retry_path)]
    if options.soak_seconds:
        paced.append(("soak", report.soak))
    for name, result in paced:
        # The paced runs wait for at least one output per input, so "as many outputs as distinct events"
        # is "each event once".
        if result is None:
            out.append(Shortfall(name, "it failed (see the notes)", ours=True))
        elif result.events != result.distinct:
            out.append(Shortfall(name, f"{result.events} outputs, {result.distinct} distinct", ours=True))
    if report.retry_path is not None and report.retry_path.early:
        out.append(Shortfall("retry-path run", f"{report.retry_path.early} events started before their due time",
                             ours=True))
    return out


def paced_fetch_wait(environ: Mapping[str, str], stack: DevStack | None) -> int | None:
    """The latency and retry-path runs' fetch wait: EMBEDDED_FETCH_MAX_WAIT_MS on the bench's own Tansu
    unless ``environ`` sets one; None (the settings') otherwise. Real Kafka answers a Fetch as soon as
    records arrive, so it needs no such setting."""
    if stack is not None and stack.broker == "tansu" and not environ.get("KAFKA_FETCH_MAX_WAIT_MS"):
        return EMBEDDED_FETCH_MAX_WAIT_MS
    return None


def describe_backend(settings: Settings, embedded: Sequence[str], stack: DevStack | None = None) -> str:
    """Where the run's servers are, for the report (never the Redis URL: it may hold a password)."""
    if "KAFKA_BOOTSTRAP_SERVERS" not in embedded:
        kafka = f"Kafka {settings.kafka_bootstrap_servers}"
    elif stack is None or stack.broker == "tansu":
        kafka = "embedded Tansu"
    else:
        kafka = f"own {stack.describe()}"
    redis = "embedded redis-server" if "REDIS_URL" in embedded else "Redis from REDIS_URL"
    return f"{kafka}, {redis}"


def brokers_to_run(options: BenchOptions) -> tuple[BrokerKind, ...]:
    if options.broker == "both":
        return ("kafka", "tansu")
    if options.broker in ("kafka", "tansu"):
        return (options.broker,)  # type: ignore[return-value]
    raise ConfigError(f"bench --broker {options.broker}: choose kafka, tansu or both")


def side_by_side(kafka: br.Report, tansu: br.Report) -> str:
    """One line: each variant's events/s on Kafka over its events/s on Tansu, in the same invocation."""
    cells = []
    for key, _label in VARIANTS:
        value = br.ratio(kafka.rate(key), tansu.rate(key))
        cells.append(f"({key}) {'n/a' if value is None else f'{value:.2f}x'}")
    return "events/s on Apache Kafka over events/s on Tansu, same invocation: " + ", ".join(cells)


def bench_command(options: BenchOptions, environ: Mapping[str, str] | None = None) -> int:
    """``processor bench``: run, print the table, write the JSON, say which run fell short; exit 1 when one
    of our pipeline's did."""
    env = dict(os.environ if environ is None else environ)
    missing = missing_servers(env)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if options.guarantee:
        return _guarantee(options, env, missing, progress)
    reports: list[br.Report] = []
    if not missing:
        settings = Settings.load(env)
        reports.append(run_bench(settings, options, describe_backend(settings, missing), progress))
    else:
        for broker in brokers_to_run(options) if "KAFKA_BOOTSTRAP_SERVERS" in missing else ("tansu",):
            reports.append(_run_on_own_servers(options, env, missing, broker, progress))
    for report in reports:
        print(br.render_table(report))
    if len(reports) == 2:
        print(side_by_side(*reports))
    if options.json_path is not None:
        doc = reports[0].as_json() if len(reports) == 1 else {"runs": [r.as_json() for r in reports]}
        options.json_path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    missed = [shortfall for report in reports for shortfall in shortfalls(report, options)]
    for shortfall in missed:
        print(shortfall.line(), file=sys.stderr)
    return 1 if any(m.ours for m in missed) else 0


def _guarantee(options: BenchOptions, env: Mapping[str, str], missing: Sequence[str],
               progress: Callable[[str], None]) -> int:
    from processor.bench.guarantee import HEADER, measure_guarantees

    if options.broker != "kafka" and "KAFKA_BOOTSTRAP_SERVERS" in missing:
        raise ConfigError(f"bench --guarantee --broker {options.broker}: Faust's exactly_once needs Kafka "
                          "transactions, which only --broker kafka has")
    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    log_dir = options.state_dir / run_id
    log_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as servers:
        overrides = {}
        if missing:
            stack = servers.enter_context(scratch_stack(options.state_dir / "bench-guarantee", "kafka"))
            overrides = {name: stack.env()[name] for name in missing}
        settings = Settings.load(env, overrides=overrides)
        rows = measure_guarantees(settings, run_id, options.events, options.partitions, log_dir, progress)
    print(f"processor bench {run_id} --guarantee: {options.events} events, {options.partitions} partitions")
    print(HEADER)
    for row in rows:
        print(row.line())
    ours = rows[0]
    return 1 if ours.lost or ours.note else 0


def _run_on_own_servers(
    options: BenchOptions, env: Mapping[str, str], missing: Sequence[str], broker: BrokerKind,
    progress: Callable[[str], None],
) -> br.Report:
    # One Kafka node: the bench measures the pipeline, not replication; and the JVM a production broker
    # runs (C2, G1), since the broker's speed is part of what every variant's rate includes.
    with scratch_stack(options.state_dir / f"bench-{broker}", broker, throughput=True) as stack:
        own = stack.env()
        settings = Settings.load(env, overrides={name: own[name] for name in missing})
        own_broker = "KAFKA_BOOTSTRAP_SERVERS" in missing
        wait = paced_fetch_wait(env, stack if own_broker else None)
        report = run_bench(settings, options, describe_backend(settings, missing, stack), progress, wait,
                           stack.kafka[0].pid if own_broker else None,
                           stack.redis.pid if "REDIS_URL" in missing else None)
    if options.latency and own_broker and broker == "tansu":
        note = tansu_latency_note(wait or settings.kafka_fetch_max_wait_ms)
        report = dataclasses.replace(report, notes=(*report.notes, note))
    return report
