"""The `processor` command line. Every subcommand explains itself with ``--help``.

Errors that the user can fix (a bad setting, a port in use) print one line and exit non-zero. What each
subcommand does is in processor.cli.commands.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeAlias

from processor.cli.commands import (
    CONNECTION_FLAGS,
    cmd_bench,
    cmd_chaos_run,
    cmd_dedup_capacity,
    cmd_demo,
    cmd_dev_down,
    cmd_dev_env,
    cmd_dev_status,
    cmd_dev_up,
    cmd_dlq_list,
    cmd_dlq_replay,
    cmd_monitor,
    cmd_slo_dashboard,
    cmd_slo_rules,
    cmd_status,
    cmd_topics_create,
    cmd_worker,
)
from processor.errors import ConfigError, ProcessorError
from processor.topology.retry import parse_duration
from processor.topology.slo import window_seconds

Command = Callable[[argparse.Namespace], int]


Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"  # what add_subparsers returns


def _command_group(commands: Commands, name: str, help: str, description: str) -> Commands:
    """A command whose own subcommands are its actions (``processor NAME ACTION``)."""
    group = commands.add_parser(name, help=help, description=description)
    return group.add_subparsers(dest=f"{name}_command", required=True, metavar="ACTION")


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (flags override the environment variable named)")
    for flag, env, text in CONNECTION_FLAGS:
        group.add_argument(flag, dest=env, metavar="VALUE", help=f"{text} [env {env}]")


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return int(text)


def _non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def _duration(text: str) -> float:
    try:
        return parse_duration(text if not text.replace(".", "", 1).isdigit() else f"{text}s")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _window(text: str) -> int:
    try:
        return window_seconds(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of events per second") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


# -- parser ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="processor",
        description="A Kafka stream processor with SRE built in: schema checks, Redis dedup, retry tiers, "
        "dead-letter topics, circuit breakers and SLO metrics, for topologies written as Python modules.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev_commands = _command_group(commands, "dev", "run a broker (Tansu or Apache Kafka) and Redis in the background",
                                  "Start, stop or inspect a local broker and Redis for development.")
    state = argparse.ArgumentParser(add_help=False)
    state.add_argument("--state-dir", type=Path, default=Path(".processor"),
                       help="where pids, addresses and logs are kept (default: .processor)")
    up = dev_commands.add_parser(
        "up", parents=[state], help="start both servers (a no-op when they already run)",
        description="Start a broker (Tansu, or an Apache Kafka KRaft cluster) and redis-server in the "
        "background and wait until they answer. Prints "
        "`export` lines on stdout, so `eval \"$(processor dev up)\"` configures the shell; messages go to "
        "stderr.",
    )
    up.add_argument("--broker", choices=("tansu", "kafka"), default="tansu",
                    help="tansu: the embedded dev broker, memory-only (default); kafka: Apache Kafka in KRaft "
                    "mode, its log kept under the state dir across down and up")
    up.add_argument("--brokers", type=_positive, default=1,
                    help="with --broker kafka: cluster size (3 gives replication factor 3, min ISR 2)")
    up.add_argument("--kafka-port", type=_port, help="Tansu's port (default: a free port)")
    up.add_argument("--redis-port", type=_port, help="Redis port (default: a free port)")
    up.add_argument("--print-env", action="store_true", help="accepted for clarity: the exports are always printed")
    up.set_defaults(func=cmd_dev_up)
    down = dev_commands.add_parser("down", parents=[state], help="stop what `dev up` started, nothing else",
                                   description="Stop the servers recorded by `processor dev up`.")
    down.add_argument("--purge", action="store_true", help="also delete the Kafka cluster's log on disk")
    down.set_defaults(func=cmd_dev_down)
    dev_commands.add_parser("status", parents=[state], help="show whether the servers run (exit 3 if not)",
                            description="Show the recorded servers, their addresses and state.").set_defaults(
        func=cmd_dev_status)
    dev_commands.add_parser("env", parents=[state], help="print the export lines of the running stack",
                            description="Print KAFKA_BOOTSTRAP_SERVERS and REDIS_URL exports for `eval`."
                            ).set_defaults(func=cmd_dev_env)

    worker = commands.add_parser(
        "worker", help="run a topology's handlers as a long-running worker",
        description="Run every handler of TOPOLOGY (a module path such as topologies.orders). Start the "
        "same command several times, on one machine or many, to share the partitions among replicas.",
    )
    worker.add_argument("topology", help="module path of the topology, e.g. topologies.orders")
    worker.add_argument("--no-create-topics", action="store_true",
                        help="do not create missing topics at start")
    _add_settings_flags(worker)
    worker.set_defaults(func=cmd_worker)

    topic_commands = _command_group(commands, "topics", "manage the topics a topology needs",
                                    "Manage the topics a topology reads and writes.")
    create = topic_commands.add_parser(
        "create", help="create every topic of a topology (idempotent)",
        description="Create the sources, outputs, retry tiers and dead-letter topics of TOPOLOGY that do "
        "not exist yet.",
    )
    create.add_argument("topology", help="module path of the topology")
    create.add_argument("--partitions", type=_positive, help="partitions per new topic "
                        "[env PROCESSOR_TOPIC_PARTITIONS, default 3]")
    create.add_argument("--replication-factor", type=_positive, help="replication factor of new topics "
                        "[env PROCESSOR_TOPIC_REPLICATION_FACTOR, default 1]")
    _add_settings_flags(create)
    create.set_defaults(func=cmd_topics_create)

    monitor = commands.add_parser(
        "monitor", help="run only the lag/latency monitor of a topology",
        description="Measure the consumer lag of every consumer group of TOPOLOGY, evaluate its status and "
        "export it on /metrics, without running any handler (every worker also runs this monitor; one "
        "process per topology measures at a time, elected through Redis).",
    )
    monitor.add_argument("topology", help="module path of the topology")
    monitor.add_argument("--interval", type=_seconds, default=5.0, help="seconds between passes (default 5)")
    _add_settings_flags(monitor)
    monitor.set_defaults(func=cmd_monitor)

    status = commands.add_parser(
        "status", help="live view of lag, p99s, SLO budgets and breakers",
        description="Show lag per partition, lag status, p99 processing and end-to-end times, SLO budget and "
        "burn rates and breaker states of TOPOLOGY, read from a worker's /metrics (lag from the broker when "
        "that worker is not the one measuring it). Refreshes until Ctrl-C; --once prints one view.",
    )
    status.add_argument("topology", help="module path of the topology")
    status.add_argument("--metrics-url", help="a worker's /metrics (default: 127.0.0.1 on PROCESSOR_METRICS_PORT)")
    status.add_argument("--once", action="store_true", help="print one view and exit")
    status.add_argument("--json", action="store_true", help="with --once: JSON for scripts")
    status.add_argument("--interval", type=_seconds, default=2.0, help="refresh every N seconds (default 2)")
    _add_settings_flags(status)
    status.set_defaults(func=cmd_status)

    slo_commands = _command_group(commands, "slo", "Prometheus rules and a Grafana dashboard from a topology's SLOs",
                                  "Generate monitoring configuration from the SLOs a topology declares.")
    rules = slo_commands.add_parser(
        "rules", help="recording rules and multi-window multi-burn-rate alerts",
        description="Print (or write with -o) Prometheus recording rules per SLO, burn-rate alerts (page on "
        "1h/5m at 14.4x and 6h/30m at 6x, ticket on 1d/2h at 3x and 3d/6h at 1x, scaled to the SLO window), "
        "lag-status, stalled-monitor, breaker and dependency alerts, each with a runbook link. The output "
        "passes `promtool check rules`.",
    )
    rules.add_argument("topology", help="module path of the topology")
    rules.add_argument("-o", "--output", type=Path, help="write to FILE instead of stdout")
    rules.add_argument("--runbook-base", metavar="URL", help="URL prefix of the runbooks (default: the repository)")
    rules.set_defaults(func=cmd_slo_rules)
    dashboard = slo_commands.add_parser(
        "dashboard", help="a Grafana dashboard (JSON)",
        description="Print (or write with -o) a Grafana dashboard: lag, p99s, success rate, error budget, "
        "burn rates, breaker state, DLQ and retry rates. docker-compose provisions the dashboards in "
        "processor/ops/deploy/grafana/dashboards/.",
    )
    dashboard.add_argument("topology", help="module path of the topology")
    dashboard.add_argument("-o", "--output", type=Path, help="write to FILE instead of stdout")
    dashboard.set_defaults(func=cmd_slo_dashboard)

    dedup_commands = _command_group(commands, "dedup", "size the Redis that dedup needs",
                                    "Dedup's memory, from the bytes per id processor bench measures.")
    capacity = dedup_commands.add_parser(
        "capacity", help="the Redis memory a dedup window needs at a rate",
        description="Print the Redis memory the done-marks of RATE events/s per handler need for WINDOW.",
    )
    capacity.add_argument("--rate", type=_rate, required=True, help="events/s into each handler")
    capacity.add_argument("--window", type=_window, required=True,
                          help="how long ids are remembered (the topology's dedup_ttl_seconds): 90m, 12h, 7d")
    capacity.add_argument("--handlers", type=_positive, default=1, help="handlers deduplicating (default 1)")
    capacity.add_argument("--peak-rate", type=_rate,
                          help="the topology's dedup_peak_rate (default: --rate, a layout sized for it)")
    capacity.set_defaults(func=cmd_dedup_capacity)

    dlq_commands = _command_group(commands, "dlq", "inspect and replay dead-lettered events",
                                  "Inspect a topology's dead-letter topics and replay entries.")
    listing = dlq_commands.add_parser(
        "list", help="show DLQ entries with their reason, attempts and original position",
        description="List the entries of TOPOLOGY's dead-letter topics, oldest first.",
    )
    listing.add_argument("topology", help="module path of the topology")
    listing.add_argument("--handler", help="only this handler's DLQ")
    listing.add_argument("--limit", type=_positive, help="at most N entries")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    _add_settings_flags(listing)
    listing.set_defaults(func=cmd_dlq_list)
    again = dlq_commands.add_parser(
        "replay", help="send DLQ entries back to their handler, once each",
        description="Send entries of HANDLER's DLQ back to that handler (through its first retry topic, due "
        "at once, attempts reset). Each entry is replayed once: a ledger in Redis remembers what was "
        "replayed. An event the handler processed meanwhile is skipped by dedup unless --force. Exits 1 "
        "when an --event-id is not in the DLQ.",
    )
    again.add_argument("topology", help="module path of the topology")
    again.add_argument("--handler", required=True, help="the handler whose DLQ to replay")
    which = again.add_mutually_exclusive_group(required=True)
    which.add_argument("--event-id", nargs="+", metavar="ID", help="replay the entries of these event ids")
    which.add_argument("--all", action="store_true", help="replay every entry not replayed before")
    again.add_argument("--dry-run", action="store_true", help="show what would be replayed, change nothing")
    again.add_argument("--rate", type=_rate, metavar="N", help="at most N events per second")
    again.add_argument("--force", action="store_true",
                       help="replay entries replayed before, and process events even if already processed")
    _add_settings_flags(again)
    again.set_defaults(func=cmd_dlq_replay)

    demo = commands.add_parser(
        "demo", help="run the reference topology under load and print an account of it",
        description="Run a worker of topologies.orders with injected failures, produce orders (with "
        "duplicates and malformed ones) and print, per handler: in, processed, duplicates, retried, "
        "dead-lettered and p99 processing time. Exit 0 when every event is accounted for.",
    )
    demo.add_argument("--events", type=_positive, default=2000, help="orders to produce (default 2000)")
    demo.add_argument("--duplicates", type=_non_negative, default=100, help="extra copies of orders (default 100)")
    demo.add_argument("--malformed", type=_non_negative, default=20, help="malformed events (default 20)")
    demo.add_argument("--embedded", action="store_true",
                      help="start a private broker and Redis for the run instead of using the settings")
    demo.add_argument("--state-dir", type=Path, default=Path(".processor"), help="where logs go")
    _add_settings_flags(demo)
    demo.set_defaults(func=cmd_demo)

    bench = commands.add_parser(
        "bench", help="compare the pipeline with plain Kafka, Faust and Quix loops on the same data",
        description="Fill a source topic with N events, then run on it, each as a process of its own: (a) a "
        "confluent-kafka loop, (b0) a consume-only Faust agent, (b) a Faust agent with await send() per event, "
        "(c) `processor worker` on a pass-through topology, (d) the same with sampled tracing, (e) Quix Streams "
        "if installed. Prints events/s, p50/p99 processing and end-to-end times, peak RSS, CPU per 1k events "
        "and the ratios c/a, c/b, c/b0, c/e. Starts an embedded broker and Redis for whichever of "
        "KAFKA_BOOTSTRAP_SERVERS and REDIS_URL is not set. "
        "A variant with no first output 120 s after its start, or no new output for 30 s, stops with what it saw. "
        "Exit 1 only when one of our own variants (c, d, the paced runs) falls short; a baseline that falls "
        "short is reported in the table and the JSON.",
    )
    bench.add_argument("--events", type=_positive, default=20000, help="events in the source topic (default 20000)")
    bench.add_argument("--partitions", type=_positive, default=3, help="partitions of every bench topic (default 3)")
    bench.add_argument("--payload-bytes", type=_positive, default=200, help="bytes of each event's JSON (default 200)")
    bench.add_argument("--json", type=Path, metavar="FILE", help="also write the results to FILE as JSON")
    bench.add_argument("--only", metavar="KEYS",
                       help="run only these variants, comma-separated (a,b0,b,c,d,e); the rest are reported skipped")
    bench.add_argument("--latency", action="store_true",
                       help="also run (c) for 10 s at 50%% of its measured maximum rate and report its end-to-end "
                       "p50/p99 beside the broker's own (and how busy the CPUs were meanwhile; its p99 and the "
                       "embedded broker's CPU by third of the run), and its retry "
                       "path at 5%% (every first attempt fails): events started before their due time, and the "
                       "lateness after it")
    bench.add_argument("--soak", type=_duration, default=0.0, metavar="DURATION",
                       help="also run (c) at --soak-rate for DURATION (e.g. 10m) and report its RSS slope")
    bench.add_argument("--soak-rate", type=_positive, default=2000,
                       help="events/s of the soak (default 2000: the embedded broker keeps every record in memory "
                       "and slows down as its topics grow)")
    bench.add_argument("--broker", choices=("kafka", "tansu", "both"), default="kafka",
                       help="the bench's own broker when KAFKA_BOOTSTRAP_SERVERS is unset: one Apache Kafka node "
                       "(default), Tansu, or both in turn, with each variant's Kafka/Tansu ratio")
    bench.add_argument("--guarantee", action="store_true",
                       help="instead: Faust's exactly_once (transactions) against our dedup + stored outputs, each "
                       "SIGKILLed at 40%% and restarted; lost events, duplicate outputs (read_committed) and "
                       "duplicate side effects of each (Apache Kafka only)")
    bench.add_argument("--dedup-memory", type=_positive, metavar="IDS",
                       help="instead: Redis used_memory per remembered event id, over IDS ids (e.g. 1000000) "
                       "through claim, stored outputs and done, in a layout sized for them and in one sized for "
                       "8x more (a redis-server of its own)")
    bench.add_argument("--redis-modes", action="store_true",
                       help="instead: (c) on one Redis, on a local Redis Cluster (3 masters, 3 replicas) and on "
                       "that cluster with REDIS_WAIT_REPLICAS=1, on one Kafka node: events/s side by side and "
                       "Redis memory per event")
    bench.add_argument("--state-dir", type=Path, default=Path(".processor"),
                       help="where logs and the embedded servers' files go (default: .processor)")
    bench.set_defaults(func=cmd_bench)

    chaos_commands = _command_group(commands, "chaos", "chaos experiments: faults under load, with a verdict",
                                    "Run chaos experiments against the processor.")
    chaos_run = chaos_commands.add_parser(
        "run", help="run an experiment, the quick subset or all of them",
        description="Run EXPERIMENT (a name from --list, `quick` for the subset `make test` runs, or `all`), each "
        "on a broker (by default a 3-node Apache Kafka cluster) and Redis of its own (the servers "
        "KAFKA_BOOTSTRAP_SERVERS and REDIS_URL name, when both are "
        "set), verify events, side effects, lag, /metrics and alerts, print a table and write a markdown and a "
        "JSON report. Exit 0 only when every experiment passed.",
    )
    chaos_run.add_argument("experiment", nargs="?", default="all", help="an experiment, quick or all (default all)")
    chaos_run.add_argument("--broker", choices=("kafka", "tansu"), default="kafka",
                           help="each experiment's own broker: Apache Kafka (default) or Tansu (no broker faults)")
    chaos_run.add_argument("--brokers", type=_positive, default=3,
                           help="with --broker kafka: nodes of each experiment's cluster (default 3)")
    chaos_run.add_argument("--topology", default="topologies.orders",
                           help="topology module (default topologies.orders)")
    chaos_run.add_argument("--events", type=_positive, help="events per experiment (default: each experiment's own)")
    chaos_run.add_argument("--duration", type=_seconds, help="seconds of load per experiment (default: its own)")
    chaos_run.add_argument("--report", type=Path, default=Path(".processor/chaos/report.md"),
                           help="markdown report; JSON beside it, process logs in <report>-logs/")
    chaos_run.add_argument("--list", action="store_true", help="list the experiments and exit")
    chaos_run.set_defaults(func=cmd_chaos_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Command = args.func
    try:
        return func(args)
    except ConfigError as exc:
        print(f"processor: error: {exc}", file=sys.stderr)
        return 2
    except ProcessorError as exc:
        print(f"processor: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
