"""The chaos workload: run-prefixed ids, the poison mix (each record's expected fate checked against the real
decoder and schema), and the experiment set, its report and its command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from processor.chaos.command import list_experiments
from processor.chaos.experiments import EXPERIMENTS, by_name
from processor.chaos.judge import Outcome
from processor.chaos.model import CheckResult
from processor.chaos.report import markdown, table, write_report
from processor.chaos.workload import PROCESS, WorkloadSpec, build_inputs
from processor.cli.main import build_parser
from processor.errors import InvalidEvent
from processor.runtime.decode import Decoder, compile_schema
from processor.topology.topology import load_topology


def test_every_input_is_run_prefixed_and_unique() -> None:
    inputs = build_inputs("r1", WorkloadSpec(50, 1.0, duplicates=5, poison=True, oversized=1), partitions=3)
    assert len({i.input_id for i in inputs}) == len(inputs)
    assert all(i.input_id.startswith("r1-") for i in inputs)
    assert all(i.event_id is None or i.event_id.startswith("r1-") for i in inputs)
    assert sum(i.kind == "duplicate" for i in inputs) == 5
    again = build_inputs("r1", WorkloadSpec(50, 1.0, duplicates=5, poison=True, oversized=1), partitions=3)
    assert [(i.input_id, i.kind) for i in again] == [(i.input_id, i.kind) for i in inputs]  # the same mix, same order


def test_poison_records_meet_the_fate_the_verifier_expects() -> None:
    orders = load_topology("topologies.orders")
    decoder = Decoder(compile_schema(orders.schemas_dir, "order_created"), "event_id", orders.max_event_bytes)
    inputs = build_inputs("r1", WorkloadSpec(0, 1.0, poison=True, oversized=1), partitions=3)
    kinds = {i.kind for i in inputs}
    assert {"malformed-json", "binary-garbage", "null-value", "schema-invalid", "wrong-types", "unknown-fields",
            "missing-event-id", "huge", "missing-key", "cross-partition-duplicate", "oversized"} <= kinds
    for record in inputs:
        if record.expect == PROCESS:
            _, event_id = decoder.decode(record.value, {})
            assert event_id == record.event_id
        else:
            with pytest.raises(InvalidEvent) as caught:
                decoder.decode(record.value, {})
            assert caught.value.reason == record.expect, record.kind
    twins: dict[str | None, list[int | None]] = {}
    for i in inputs:
        if i.kind == "cross-partition-duplicate":
            twins.setdefault(i.event_id, []).append(i.partition)
    assert twins
    assert all(len(set(p)) == 2 for p in twins.values())
    assert all(i.key is None for i in inputs if i.kind == "missing-key")


def test_the_experiment_set() -> None:
    names = [e.name for e in EXPERIMENTS]
    assert len(names) == len(set(names))
    assert {"sigkill-replica", "rolling-restart", "redis-restart", "redis-pause", "broker-pause", "dependency-outage",
            "poison-messages", "scale-out-in", "stop-consumers", "handler-exceptions", "handler-latency"} <= set(names)
    assert [e.name for e in by_name("quick")] == ["handler-latency", "sigkill-replica", "poison-messages"]
    assert by_name("all") == list(EXPERIMENTS)
    with pytest.raises(KeyError):
        by_name("nope")
    assert any(e.pages for e in EXPERIMENTS)
    assert any(e.fault.crash for e in EXPERIMENTS)
    assert "sigkill-replica" in list_experiments()


def test_the_command_line() -> None:
    args = build_parser().parse_args(["chaos", "run", "sigkill-replica", "--events", "10", "--duration", "2.5",
                                      "--report", "r.md"])
    assert (args.experiment, args.events, args.duration, args.report, args.list) == (
        "sigkill-replica", 10, 2.5, Path("r.md"), False)
    assert build_parser().parse_args(["chaos", "run"]).experiment == "all"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["chaos", "run", "--events", "0"])


def test_the_report(tmp_path: Path) -> None:
    good = Outcome("sigkill-replica", "run-1", "nothing lost", "SIGKILL", passed=True, events=10, max_lag_messages=3,
                   recovery_seconds=1.5, alert="ok: no page", checks=(CheckResult("every input", True, "10 units"),),
                   timeline=((1.0, "inject", "SIGKILL worker-1"),), p99_ms={"before": 5.0, "during": None})
    bad = Outcome("broker-pause", "run-2", "h", "pause", passed=False, error="StackError: boom")
    text = table([good, bad])
    assert "sigkill-replica" in text
    assert "PASS" in text
    assert "FAIL" in text
    assert "StackError: boom" in text
    long = Outcome("broker-rolling-restart", "run-3", "h", "restarts", passed=True, events=2400)
    assert table([good, long]).splitlines()[3].split()[:2] == ["broker-rolling-restart", "2400"]
    doc = markdown([good, bad], {"topology": "topologies.orders", "target": "embedded", "elapsed_seconds": 3})
    assert "1 of 2 passed" in doc
    assert "| 1.0 | inject | SIGKILL worker-1 |" in doc
    assert "5 ms / - / -" in doc
    md, js = write_report([good], tmp_path / "r" / "report.md", {"topology": "t"})
    assert md.exists()
    assert js.read_bytes().startswith(b"{")
