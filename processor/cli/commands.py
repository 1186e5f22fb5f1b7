"""What each `processor` subcommand does; processor.cli.main parses the command line and calls these.

Each function takes the parsed arguments and returns the exit status; ProcessorErrors propagate to
processor.cli.main.main, which prints them on one line.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from processor.config import Settings
from processor.errors import ConfigError

if TYPE_CHECKING:
    from processor.topology.topology import Topology

CONNECTION_FLAGS = (
    ("--bootstrap-servers", "KAFKA_BOOTSTRAP_SERVERS", "Kafka bootstrap servers, host:port[,host:port]"),
    ("--redis-url", "REDIS_URL", "Redis URL, redis://host:port/db"),
    ("--metrics-port", "PROCESSOR_METRICS_PORT", "port serving /metrics (0: off)"),
    ("--metrics-host", "PROCESSOR_METRICS_HOST", "address /metrics binds to"),
    ("--log-level", "PROCESSOR_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR"),
)


def settings_of(args: argparse.Namespace) -> Settings:
    """Settings from the environment, with the connection flags the command line gave on top."""
    return Settings.load(overrides={env: getattr(args, env, None) for _, env, _ in CONNECTION_FLAGS})


def _load_topology(name: str) -> Topology:
    """Import a topology module by path, from the current directory too (like `python -m`)."""
    from processor.topology.topology import load_topology

    _import_path()
    return load_topology(name)


def _import_path() -> None:
    # Like `python -m`, let topology modules in the current directory be imported.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


# -- dev ---------------------------------------------------------------------------------------------------


def cmd_dev_up(args: argparse.Namespace) -> int:
    from processor.dev import devstack

    stack, started = devstack.up(args.state_dir, args.kafka_port, args.redis_port, args.broker, args.brokers)
    if started:
        print(f"started {stack.describe()} on {stack.bootstrap_servers} and redis on {stack.redis.address}; "
              f"state in {args.state_dir}", file=sys.stderr)
    else:
        print(f"already running ({stack.describe()} on {stack.bootstrap_servers}, redis {stack.redis.address}); "
              "nothing started", file=sys.stderr)
    sys.stdout.write(stack.shell_exports())
    return 0


def cmd_dev_down(args: argparse.Namespace) -> int:
    from processor.dev import devstack

    stack = devstack.down(args.state_dir, purge=args.purge)
    if stack is None:
        print(f"nothing to stop: no stack recorded in {args.state_dir}", file=sys.stderr)
    else:
        pids = ", ".join(str(server.pid) for server in stack.kafka)
        print(f"stopped {stack.describe()} (pid {pids}) and redis (pid {stack.redis.pid})", file=sys.stderr)
    if args.purge:
        print(f"deleted the Kafka log under {args.state_dir / 'kafka'}", file=sys.stderr)
    return 0


def cmd_dev_status(args: argparse.Namespace) -> int:
    from processor.dev import devstack

    stack = devstack.load(args.state_dir)
    if stack is None:
        print(f"not running: no stack recorded in {args.state_dir}")
        return 3
    print(f"broker: {stack.describe()}")
    for server in (*stack.kafka, stack.redis):
        state = "running" if server.alive() else "STOPPED"
        print(f"{server.name:<8} {state:<8} {server.address:<16} pid {server.pid}  log {server.log}")
    return 0 if stack.running() else 3


def cmd_dev_env(args: argparse.Namespace) -> int:
    from processor.dev import devstack

    stack = devstack.load(args.state_dir)
    if stack is None or not stack.running():
        raise ConfigError(f"no running stack in {args.state_dir}: run `processor dev up` first")
    sys.stdout.write(stack.shell_exports())
    return 0


# -- worker and topics -------------------------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    from processor.observability.logs import configure_logging
    from processor.runtime.worker import Worker

    settings = settings_of(args)
    configure_logging(settings.log_level)
    topology = _load_topology(args.topology)
    Worker(topology, settings, create_topics=not args.no_create_topics).run()
    return 0


def cmd_topics_create(args: argparse.Namespace) -> int:
    from processor.kafka.producer import ensure_topics

    settings = settings_of(args)
    topology = _load_topology(args.topology)
    partitions = args.partitions or topology.partitions or settings.topic_partitions
    replication = args.replication_factor or settings.topic_replication_factor
    names = topology.topics()
    created = ensure_topics(settings, names, partitions, replication)
    for name in names:
        print(f"{'created' if name in created else 'exists '}  {name}")
    return 0


# -- monitor and status ------------------------------------------------------------------------------------


def cmd_monitor(args: argparse.Namespace) -> int:
    import asyncio
    import os
    import socket
    import uuid

    import redis.asyncio as aioredis

    from processor.observability.logs import configure_logging
    from processor.observability.metrics import Metrics
    from processor.observability.monitor import Monitor

    settings = settings_of(args)
    configure_logging(settings.log_level)
    topology = _load_topology(args.topology)
    metrics = Metrics()
    metrics.serve(settings.metrics_host, settings.metrics_port)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    monitor = Monitor(topology, settings, metrics, aioredis.Redis.from_url(settings.redis_url.reveal()), owner,
                      latency={}, interval_seconds=args.interval)
    asyncio.run(monitor.run_forever())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import time

    import orjson
    from rich.console import Console
    from rich.live import Live

    from processor.ops.status import render, snapshot

    settings = settings_of(args)
    topology = _load_topology(args.topology)
    url = args.metrics_url or f"http://127.0.0.1:{settings.metrics_port}/metrics"
    snap = snapshot(topology, settings, url)
    missing = snap.missing_line()
    if missing is not None:
        print(missing, file=sys.stderr)  # stdout stays the view (or the JSON) alone
    if args.once:
        if args.json:
            sys.stdout.write(orjson.dumps(snap.as_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
        else:
            Console().print(render(snap))
        return 0
    with Live(render(snap), refresh_per_second=1, screen=False) as live:
        while True:
            time.sleep(args.interval)
            live.update(render(snapshot(topology, settings, url)))


# -- slo -----------------------------------------------------------------------------------------------------


def _write(text: str, path: Path | None) -> None:
    if path is None:
        sys.stdout.write(text)
    else:
        path.write_text(text)
        print(f"wrote {path}", file=sys.stderr)


def cmd_slo_rules(args: argparse.Namespace) -> int:
    from processor.ops.rules import RUNBOOK_BASE, render_rules

    _write(render_rules(_load_topology(args.topology), runbook_base=args.runbook_base or RUNBOOK_BASE), args.output)
    return 0


def cmd_slo_dashboard(args: argparse.Namespace) -> int:
    from processor.ops.dashboard import render_dashboard

    _write(render_dashboard(_load_topology(args.topology)), args.output)
    return 0


# -- dlq -----------------------------------------------------------------------------------------------------


def cmd_dlq_list(args: argparse.Namespace) -> int:
    import orjson

    from processor.ops.dlq import list_entries

    settings = settings_of(args)
    topology = _load_topology(args.topology)
    entries = list_entries(settings, topology, args.handler, args.limit)
    if args.json:
        sys.stdout.write(orjson.dumps([e.summary() for e in entries], option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    if not entries:
        print("no dead-lettered events")
        return 0
    print(f"{'handler':<20}{'position':<12}{'event id':<38}{'reason':<20}{'attempts':>8}  original")
    for e in entries:
        print(f"{e.handler:<20}{e.position:<12}{(e.event_id or '-'):<38}{e.reason:<20}{e.attempts:>8}  "
              f"{e.original_topic}[{e.original_partition}:{e.original_offset}]  {e.exception}: {e.message[:80]}")
    return 0


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    from processor.ops.dlq import replay

    settings = settings_of(args)
    topology = _load_topology(args.topology)
    outcome = replay(settings, topology, args.handler, event_ids=None if args.all else args.event_id,
                     dry_run=args.dry_run, rate_per_second=args.rate, force=args.force)
    verb = "would replay" if args.dry_run else "replayed"
    for e in outcome.replayed:
        print(f"{verb} {e.event_id or '-'} from {e.dlq_topic}[{e.position}] ({e.reason})")
    for e in outcome.already_replayed:
        print(f"skipped {e.event_id or '-'} from {e.dlq_topic}[{e.position}]: replayed before (--force to repeat)")
    for event_id in outcome.not_found:
        print(f"not found in the DLQ: {event_id}")
    print(f"{verb} {len(outcome.replayed)}, skipped {len(outcome.already_replayed)}, "
          f"not found {len(outcome.not_found)}")
    return 1 if outcome.not_found else 0


# -- demo --------------------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from processor.dev.demo import DemoOptions, run_demo

    _import_path()
    options = DemoOptions(events=args.events, duplicates=args.duplicates, malformed=args.malformed,
                          state_dir=args.state_dir)
    if not args.embedded:
        return run_demo(settings_of(args), options)
    from processor.dev.devstack import scratch_stack

    with scratch_stack(args.state_dir / "demo-stack") as stack:
        return run_demo(Settings.load(overrides=stack.env()), options)


# -- dedup -------------------------------------------------------------------------------------------------


def cmd_dedup_capacity(args: argparse.Namespace) -> int:
    from processor.ops.dedup_capacity import Capacity, describe

    print(describe(Capacity(args.rate, args.window, args.handlers, args.peak_rate or args.rate)))
    return 0


# -- bench -------------------------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    # The bench is imported only when it runs: the command line does not load the lab to start.
    from processor.bench.command import BenchOptions, bench_command
    from processor.bench.report import ORDER

    if args.dedup_memory:
        from processor.bench.dedup_memory import measure, report

        for fill in (1.0, 1 / 8):
            print(report(measure(args.dedup_memory, fill=fill)))
        return 0
    if args.redis_modes:
        from processor.bench.redis_modes import measure_redis_modes, render

        options = BenchOptions(events=args.events, partitions=args.partitions, payload_bytes=args.payload_bytes,
                               state_dir=args.state_dir)
        rows = measure_redis_modes(options, os.environ, lambda line: print(line, file=sys.stderr, flush=True))
        print(render(rows, options))
        return 0 if all(row.events_per_s is not None for row in rows) else 1
    only = None
    if args.only is not None:
        only = frozenset(k.strip() for k in args.only.split(",") if k.strip())
        if not only or only - set(ORDER):
            raise ConfigError(f"bench --only {args.only!r}: choose from {','.join(ORDER)}")
    return bench_command(BenchOptions(
        events=args.events, partitions=args.partitions, payload_bytes=args.payload_bytes, json_path=args.json,
        latency=args.latency, state_dir=args.state_dir, only=only, soak_seconds=args.soak,
        soak_rate=float(args.soak_rate), broker=args.broker, guarantee=args.guarantee,
    ))


# -- chaos -------------------------------------------------------------------------------------------------


def cmd_chaos_run(args: argparse.Namespace) -> int:
    from processor.chaos.command import run_command

    _import_path()
    return run_command(args.experiment, topology=args.topology, events=args.events, duration=args.duration,
                       report=args.report, list_only=args.list, broker=args.broker, brokers=args.brokers)
