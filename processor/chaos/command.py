"""`processor chaos run <experiment|all|quick>`: chaos experiments against the processor, with a verdict.

An experiment (``processor.chaos.model.Experiment``; the set is in ``processor.chaos.experiments``) is a
steady-state hypothesis, a fault, a workload and a verdict. Each one runs on a stack of its own: a
3-broker Apache Kafka cluster (or Tansu, with ``--broker tansu``) and a redis-server on free ports
(``processor.chaos.stack``), a standalone lag monitor and worker
replicas of the topology as child processes (``processor.chaos.fleet``), every process's /metrics
scraped every second (``processor.chaos.record``). The fault (``processor.chaos.faults``) strikes while
OrderCreated events flow (``processor.chaos.workload``); then every output, retry and dead-letter topic is
read back and every input of the run accounted for, per handler (``processor.chaos.verify``), the side
effects checked in the simulated services' ledgers, the workers' counts held against the verifier's
(``processor.chaos.metrics``), and the recorded series fed to the generated alert rules in a promtool
unit test (``processor.chaos.alerts``). The verdict (``processor.chaos.judge``) and a markdown and JSON
report (``processor.chaos.report``) follow; the exit status is 0 only when every experiment passed.

With ``KAFKA_BOOTSTRAP_SERVERS`` and ``REDIS_URL`` set, the experiments use those servers instead, and
broker and Redis faults are done with ``docker compose -f docker-compose.kafka.yml`` (see
``processor.chaos.stack``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

from processor.chaos.experiments import EXPERIMENTS, by_name
from processor.chaos.judge import Outcome
from processor.chaos.report import table, write_report
from processor.chaos.run import RunOptions, run_experiment
from processor.chaos.stack import external_endpoints
from processor.dev.devstack import BrokerKind
from processor.dev.kraft import KAFKA_VERSION

DEFAULT_REPORT = Path(".processor/chaos/report.md")


def list_experiments() -> str:
    """One line per experiment: name, whether `make test` runs it, fault, hypothesis."""
    lines = []
    for exp in EXPERIMENTS:
        lines.append(f"{exp.name:<20}{'quick' if exp.quick else '':<7}{exp.fault.describe()}")
        lines.append(f"{'':<27}hypothesis: {exp.hypothesis}")
    return "\n".join(lines)


def run(names: str, options: RunOptions, report: Path = DEFAULT_REPORT, echo: bool = True) -> list[Outcome]:
    """Run the experiments ``names`` stands for (see ``by_name``) one after another, write the report."""
    chosen = by_name(names)
    started = time.monotonic()
    outcomes = []
    for n, exp in enumerate(chosen, start=1):
        if echo:
            print(f"chaos: [{n}/{len(chosen)}] {exp.name}: {exp.fault.describe()}", file=sys.stderr, flush=True)
        outcome = run_experiment(exp, dataclasses.replace(options, report_dir=report.parent / f"{report.stem}-logs"))
        outcomes.append(outcome)
        if echo:
            verdict = "PASS" if outcome.passed else "FAIL"
            failed = "; ".join(f"{c.name}: {c.detail}" for c in outcome.checks if not c.ok)
            why = f" ({failed})" if failed else ""
            print(f"chaos: {exp.name}: {verdict} in {outcome.elapsed_seconds:.0f}s{why}", file=sys.stderr, flush=True)
    if options.external is not None or external_endpoints():
        target = "external servers (KAFKA_BOOTSTRAP_SERVERS, REDIS_URL)"
    elif options.broker == "kafka":
        target = f"a stack per experiment: apache kafka {KAFKA_VERSION} (KRaft, {options.brokers} brokers) and redis"
    else:
        target = "a stack per experiment: tansu (embedded) and redis"
    meta = {"topology": options.topology, "target": target, "elapsed_seconds": round(time.monotonic() - started, 1),
            "experiments": [e.name for e in chosen]}
    md, js = write_report(outcomes, report, meta)
    if echo:
        print(table(outcomes))
        print(f"\nreport: {md} and {js}; logs of every process under {report.parent / (report.stem + '-logs')}")
    return outcomes


def run_command(experiment: str, *, topology: str = "topologies.orders", events: int | None = None,
                duration: float | None = None, report: Path = DEFAULT_REPORT, list_only: bool = False,
                broker: BrokerKind = "kafka", brokers: int = 3) -> int:
    """What `processor chaos run` does; returns the exit status (0: every experiment passed)."""
    if list_only:
        print(list_experiments())
        return 0
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # topology modules are imported from the current directory
    try:
        options = RunOptions(topology=topology, events=events, duration=duration, broker=broker, brokers=brokers)
        outcomes = run(experiment, options, report)
    except KeyError:
        names = ", ".join(e.name for e in EXPERIMENTS)
        print(f"processor chaos: no experiment {experiment!r} (all, quick, {names})", file=sys.stderr)
        return 2
    return 0 if outcomes and all(o.passed for o in outcomes) else 1
