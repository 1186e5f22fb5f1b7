"""The generated Prometheus rules: structure, scaling, the committed copies, and promtool's verdict.

promtool (Debian's `prometheus` package, which `make test` installs) checks the rules and runs the unit
tests in tests/promtool/orders_rules_test.yml; without it these tests fail rather than skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]
from prometheus_client import generate_latest

from processor.errors import ConfigError
from processor.observability.metrics import Metrics
from processor.ops.rules import (
    ALERT_NAMES,
    BUDGET_REMAINING,
    RUNBOOK_BASE,
    prometheus_rules,
    render_rules,
)
from processor.topology.slo import SLO
from processor.topology.topology import Topology, load_topology

ROOT = Path(__file__).resolve().parents[2]
PROMTOOL_DIR = ROOT / "tests" / "promtool"
RUNBOOKS = ROOT / "processor" / "ops" / "runbooks"
COMMITTED = (PROMTOOL_DIR / "orders_rules.yml", ROOT / "processor" / "ops" / "deploy" / "prometheus" / "rules"
             / "orders.yml")
REGENERATE = (
    "regenerate with: .venv/bin/python -c 'import sys; from processor.ops.rules import render_rules; "
    "from processor.topology.topology import load_topology; "
    "sys.stdout.write(render_rules(load_topology(\"topologies.orders\")))' > {path}"
)


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: `make test` installs Debian's prometheus package "
                    "(or: apt-get install prometheus)")
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=150, check=False)


def orders() -> Topology:
    return load_topology("topologies.orders")


def rules_of(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in document["groups"] for rule in group["rules"]]


def alerts_of(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for rule in rules_of(document) if "alert" in rule]


async def _noop(event: dict[str, Any], ctx: Any) -> None:
    return None


def synthetic(slos: tuple[SLO, ...], name: str = "shop.eu-1") -> Topology:
    """A topology with two sources, a handler-scoped SLO possible, and a name that needs regex escaping."""
    topology = Topology(name, slos=slos)
    topology.handler(source="carts", name="cart")(_noop)
    topology.handler(source="orders.v2", name="bill")(_noop)
    return topology


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.relative_to(ROOT)))
def test_committed_rules_are_generated(path: Path) -> None:
    assert path.read_text(encoding="utf-8") == render_rules(orders()), REGENERATE.format(
        path=path.relative_to(ROOT))


def test_promtool_check_rules() -> None:
    result = run_promtool("check", "rules", *map(str, COMMITTED))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests() -> None:
    result = run_promtool("test", "rules", str(PROMTOOL_DIR / "orders_rules_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_rules_of_other_topologies(tmp_path: Path) -> None:
    slos = (
        SLO("fast", sli="latency", objective=0.995, threshold="1s", window="7d", handler="bill"),
        SLO("kept", sli="delivery", objective=0.9999, window="28d"),
        SLO("behind", sli="lag", objective=0.95, threshold="2m", window="1d"),
    )
    path = tmp_path / "rules.yml"
    path.write_text(render_rules(synthetic(slos)), encoding="utf-8")
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_labelled_annotated_and_has_a_runbook() -> None:
    alerts = alerts_of(prometheus_rules(orders()))
    assert {a["alert"] for a in alerts} == set(ALERT_NAMES)
    for alert in alerts:
        assert alert["labels"]["severity"] in ("page", "ticket"), alert
        assert alert["labels"]["topology"] == "orders", alert
        annotations = alert["annotations"]
        assert annotations["summary"], alert
        assert annotations["description"], alert
        url = annotations["runbook_url"]
        assert url.startswith(RUNBOOK_BASE), url
        runbook = RUNBOOKS / url.removeprefix(RUNBOOK_BASE)
        assert runbook.is_file(), f"{alert['alert']}: no runbook {runbook}"
        assert runbook.read_text(encoding="utf-8").startswith(f"# {alert['alert']}\n")


def test_every_runbook_belongs_to_an_alert() -> None:
    assert {p.stem for p in RUNBOOKS.glob("*.md")} == set(ALERT_NAMES)


def test_runbook_base_is_configurable() -> None:
    alerts = alerts_of(prometheus_rules(orders(), runbook_base="https://wiki.example/runbooks"))
    assert {a["annotations"]["runbook_url"] for a in alerts} >= {
        "https://wiki.example/runbooks/ProcessorLatencyBudgetBurn.md",
        "https://wiki.example/runbooks/ProcessorDependencyDown.md",
    }


def test_burn_alerts_follow_the_workbook_pairs() -> None:
    document = prometheus_rules(orders())
    burns = [a for a in alerts_of(document) if a["labels"].get("slo") == "orders:processing-latency"]
    assert [(a["labels"]["window"], a["labels"]["severity"]) for a in burns] == [
        ("1h/5m", "page"), ("6h/30m", "page"), ("1d/2h", "ticket"), ("3d/6h", "ticket"),
    ]
    assert all("for" not in a for a in burns), "burn alerts rely on their short window, not on `for`"
    assert burns[0]["expr"] == (
        'processor_slo:error_ratio:rate1h{slo="orders:processing-latency"} > (14.4 * 0.001) and '
        'processor_slo:error_ratio:rate5m{slo="orders:processing-latency"} > (14.4 * 0.001) and '
        'processor_slo:events:increase1h{slo="orders:processing-latency"} >= 100'
    )
    assert "{{ $value | humanizePercentage }}" in burns[0]["annotations"]["description"]
    assert "99.9%" in burns[0]["annotations"]["description"]


def test_the_low_traffic_gate_is_per_slo_and_only_for_event_slis() -> None:
    topology = synthetic((
        SLO("fast", sli="latency", objective=0.999, threshold="500ms", min_events=20),
        SLO("ungated", sli="delivery", objective=0.999, min_events=0),
        SLO("lagging", sli="lag", objective=0.99, threshold="30s"),
    ))
    document = prometheus_rules(topology)
    exprs = {a["labels"]["slo"]: a["expr"] for a in alerts_of(document) if a["labels"].get("window") == "1h/5m"}
    assert exprs["shop.eu-1:fast"].endswith(' and processor_slo:events:increase1h{slo="shop.eu-1:fast"} >= 20')
    assert "events:increase" not in exprs["shop.eu-1:ungated"]
    assert "events:increase" not in exprs["shop.eu-1:lagging"]  # lag counts time, not events
    recorded = {(r["record"], r["labels"]["slo"]) for r in rules_of(document) if "record" in r}
    assert {r for r, slo in recorded if slo == "shop.eu-1:fast" and "events" in r} == {
        "processor_slo:events:increase1h", "processor_slo:events:increase6h", "processor_slo:events:increase1d",
        "processor_slo:events:increase3d"}
    with pytest.raises(ConfigError, match="min_events"):
        SLO("bad", sli="delivery", objective=0.999, min_events=-1)


def test_recording_rules_per_slo_and_range() -> None:
    recorded = {(r["record"], r["labels"]["slo"]) for r in rules_of(prometheus_rules(orders())) if "record" in r}
    for slo in ("orders:processing-latency", "orders:delivery", "orders:lag"):
        for range_ in ("5m", "30m", "1h", "2h", "6h", "1d", "3d", "30d"):
            assert (f"processor_slo:error_ratio:rate{range_}", slo) in recorded
        assert (BUDGET_REMAINING, slo) in recorded
    assert ("processor_slo:lag_over_threshold:bool", "orders:lag") in recorded
    labels = next(r["labels"] for r in rules_of(prometheus_rules(orders())) if r.get("record"))
    assert labels == {"slo": "orders:processing-latency", "topology": "orders", "slo_name": "processing-latency"}


def test_windows_scale_for_a_7d_slo() -> None:
    slo = SLO("fast", sli="latency", objective=0.99, threshold="500ms", window="7d")
    document = prometheus_rules(synthetic((slo,)))
    windows = [a["labels"]["window"] for a in alerts_of(document) if a["labels"].get("slo") == "shop.eu-1:fast"]
    # 30d -> 7d: 1h -> 14m, 5m -> 70 s (rounded down to 1m), 6h -> 84m, 30m -> 7m, 1d -> 336m, 2h -> 28m,
    # 3d -> 1008m, 6h -> 84m.
    assert windows == ["14m/1m", "84m/7m", "336m/28m", "1008m/84m"]
    recorded = {r["record"] for r in rules_of(document) if "record" in r}
    for range_ in ("1m", "7m", "14m", "28m", "84m", "336m", "1008m", "7d"):
        assert f"processor_slo:error_ratio:rate{range_}" in recorded
    assert "processor_slo:error_ratio:rate1h" not in recorded


def test_selectors_scope_to_the_topology_and_handler() -> None:
    slos = (
        SLO("fast", sli="latency", objective=0.99, threshold="1s", handler="bill"),
        SLO("behind", sli="lag", objective=0.99, threshold="30s"),
        SLO("billed", sli="lag", objective=0.99, threshold="30s", handler="bill"),
    )
    exprs = {(r["record"], r["labels"]["slo_name"]): r["expr"]
             for r in rules_of(prometheus_rules(synthetic(slos))) if "record" in r}
    latency = exprs[("processor_slo:error_ratio:rate5m", "fast")]
    assert 'topology="shop.eu-1",handler="bill",le="1.0"' in latency
    assert 'processor_processing_seconds_count{topology="shop.eu-1",handler="bill"}' in latency
    assert exprs[("processor_slo:lag_over_threshold:bool", "behind")] == (
        r'max(processor_consumer_lag_seconds{group=~"shop\\.eu-1\\..+",topic=~"carts|orders\\.v2"}) > bool 30'
    )
    assert exprs[("processor_slo:lag_over_threshold:bool", "billed")] == (
        'max(processor_consumer_lag_seconds{group="shop.eu-1.bill",topic="orders.v2"}) > bool 30'
    )
    stop = next(a for a in alerts_of(prometheus_rules(synthetic(slos))) if a["alert"] == "ProcessorConsumerLagStop")
    assert r'group=~"shop\\.eu-1\\..+"' in stop["expr"]


@pytest.mark.parametrize("threshold", ["2.5ms", "500ms", "1s", "10s"])
def test_latency_le_matches_the_exposition(threshold: str) -> None:
    slo = SLO("fast", sli="latency", objective=0.99, threshold=threshold)
    expr = next(r["expr"] for r in rules_of(prometheus_rules(synthetic((slo,)))) if "record" in r)
    le = re.search(r'le="([^"]+)"', expr)
    assert le is not None
    metrics = Metrics()
    metrics.processing.labels("shop.eu-1", "bill").observe(0.001)
    exposition = generate_latest(metrics.registry).decode()
    assert f'le="{le.group(1)}"' in exposition, f"{threshold}: le={le.group(1)} is not a bucket label"


def test_stall_waits_out_the_longest_retry_delay() -> None:
    from processor.topology.retry import Retry

    topology = Topology("slow")
    topology.handler(source="in", retry=Retry(delays=("1s", "5m"), jitter=0.2), name="slow")(_noop)
    stall = next(a for a in alerts_of(prometheus_rules(topology)) if a["alert"] == "ProcessorConsumerLagStall")
    assert stall["for"] == "7m"  # 5m + 20% jitter = 6m, plus a minute
    assert next(a for a in alerts_of(prometheus_rules(orders())) if a["alert"] == "ProcessorConsumerLagStall")[
        "for"] == "2m"


def test_a_group_deferred_by_a_budget_policy_stalls_without_a_page(tmp_path: Path) -> None:
    # topologies.orders_guarded defers notify_shipping: its group stands still on purpose while the policy
    # holds it; charge_payment's stall at the same time pages. Through promtool, over the generated rules.
    guarded = load_topology("topologies.orders_guarded")
    document = prometheus_rules(guarded)
    stall = next(a for a in alerts_of(document) if a["alert"] == "ProcessorConsumerLagStall")
    assert stall["for"] == "3m"  # the longest retry delay (30 s, 10% jitter) stretched 4x: 2.2 min, plus one
    (tmp_path / "rules.yml").write_text(render_rules(guarded), encoding="utf-8")
    group = "orders.charge_payment"
    series = [
        {"series": f'processor_consumer_lag_status{{group="{g}",status="STALL"}}', "values": "1+0x20"}
        for g in (group, "orders.notify_shipping")
    ] + [{"series": 'processor_paused_partitions{topology="orders",handler="notify_shipping",reason="budget"}',
          "values": "3+0x20"},
         {"series": 'processor_paused_partitions{topology="orders",handler="charge_payment",reason="budget"}',
          "values": "0+0x20"}]
    annotations = {k: v.replace("{{ $labels.group }}", group) for k, v in stall["annotations"].items()}
    test = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series,
        "alert_rule_test": [{"eval_time": "10m", "alertname": "ProcessorConsumerLagStall", "exp_alerts": [
            {"exp_labels": {**stall["labels"], "group": group}, "exp_annotations": annotations}]}],
    }]}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test), encoding="utf-8")
    result = run_promtool("test", "rules", str(tmp_path / "test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_breakers_no_breaker_alert() -> None:
    topology = Topology("plain")
    topology.handler(source="in", name="plain")(_noop)
    assert "ProcessorCircuitOpen" not in {a["alert"] for a in alerts_of(prometheus_rules(topology))}
    assert not [g for g in prometheus_rules(topology)["groups"] if "slo" in g["name"]]


def test_render_is_plain_yaml() -> None:
    text = render_rules(orders())
    assert "&id" not in text, "shared dicts must not become YAML anchors"
    assert "*id" not in text
    assert yaml.safe_load(text) == prometheus_rules(orders())
