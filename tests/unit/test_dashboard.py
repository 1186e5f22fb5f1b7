"""The generated Grafana dashboard: structure, datasource, the committed copy, and its PromQL."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]

from processor.observability.metrics import Metrics
from processor.ops.dashboard import dashboard_uid, grafana_dashboard, promql_targets, render_dashboard
from processor.ops.rules import prometheus_rules
from processor.topology.topology import Topology, load_topology

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "processor" / "ops" / "deploy" / "grafana" / "dashboards" / "orders.json"
DATASOURCES = ROOT / "processor" / "ops" / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
REGENERATE = (
    "regenerate with: .venv/bin/python -c 'import sys; from processor.ops.dashboard import render_dashboard; "
    "from processor.topology.topology import load_topology; "
    "sys.stdout.write(render_dashboard(load_topology(\"topologies.orders\")))' > {path}"
)

# Words of PromQL that are not metric names: aggregations, functions, keywords.
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
                "group_right", "inf", "nan"}


def orders() -> Topology:
    return load_topology("topologies.orders")


def exported_names() -> set[str]:
    """Every sample name a worker's registry can expose (counters as _total, histograms as _bucket...)."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
                    "gauge": ("",)}[family.type]
        names.update(family.name + suffix for suffix in suffixes)
    return names


def recorded_names(topology: Topology) -> set[str]:
    return {r["record"] for g in prometheus_rules(topology)["groups"] for r in g["rules"] if "record" in r}


def test_committed_dashboard_is_generated() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == render_dashboard(orders()), REGENERATE.format(
        path=COMMITTED.relative_to(ROOT))


def test_dashboard_model() -> None:
    dashboard = json.loads(render_dashboard(orders()))
    assert dashboard["schemaVersion"] == 39
    assert dashboard["uid"] == "processor-orders"
    assert dashboard["title"] == "processor: orders"
    titles = {p["title"] for p in dashboard["panels"]}
    assert {
        "Consumer lag (messages)", "Consumer lag (seconds)", "Lag status", "p99 processing time",
        "p99 end-to-end time", "Success rate", "Error budget remaining", "Burn rate: processing-latency",
        "Burn rate: delivery", "Burn rate: lag", "Circuit breaker state", "Dead letters by reason",
        "Retries by tier",
    } <= titles
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_every_panel_uses_the_provisioned_datasource() -> None:
    provisioned = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))["datasources"]
    uid = next(d["uid"] for d in provisioned if d["type"] == "prometheus")
    for panel in grafana_dashboard(orders())["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid


def test_panels_fit_the_grid_without_overlap() -> None:
    cells: set[tuple[int, int]] = set()
    for panel in grafana_dashboard(orders())["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area


def _names(expr: str) -> set[str]:
    """Metric names in ``expr``: strip strings, matchers, ranges, label lists and function names."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"[A-Za-z_]\w*\s*\(", "(", text)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))
    return words - PROMQL_WORDS


def test_targets_read_only_known_metrics() -> None:
    topology = orders()
    known = exported_names() | recorded_names(topology)
    exprs = promql_targets(grafana_dashboard(topology))
    assert exprs
    seen: set[str] = set()
    for expr in exprs:
        names = _names(expr)
        assert names, expr
        assert names <= known, f"unknown metric(s) {names - known} in {expr}"
        seen |= names
    # The dashboard covers what the brief lists: lag, latency, outcomes, budgets, breakers, DLQ, retries.
    assert {"processor_consumer_lag_messages", "processor_consumer_lag_seconds", "processor_consumer_lag_status",
            "processor_processing_seconds_bucket", "processor_end_to_end_seconds_bucket", "processor_events_total",
            "processor_slo:error_budget_remaining:ratio", "processor_slo:burn_rate:rate1h",
            "processor_circuit_state", "processor_dead_letters_total", "processor_retries_total"} <= seen


def test_name_extraction_sees_through_promql() -> None:
    expr = ('histogram_quantile(0.99, sum by (handler, le) (rate(processor_processing_seconds_bucket'
            '{topology="orders",le=~"0.5|1"}[$__rate_interval]))) / on (handler) group_left() x:y:z or vector(0)')
    assert _names(expr) == {"processor_processing_seconds_bucket", "x:y:z"}


def test_every_target_parses(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: `make test` installs Debian's prometheus package "
                    "(or: apt-get install prometheus)")
    # promtool parses the expressions of a rule file; Grafana's $__rate_interval becomes a real range.
    exprs = [e.replace("$__rate_interval", "5m") for e in promql_targets(grafana_dashboard(orders()))]
    rules: dict[str, Any] = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:target:{i}", "expr": expr} for i, expr in enumerate(exprs)]}]}
    path = tmp_path / "dashboard_exprs.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", ["orders", "shop.eu-1", "a" * 60, "b" * 60 + "x"])
def test_uid_is_stable_short_and_valid(name: str) -> None:
    uid = dashboard_uid(name)
    assert uid == dashboard_uid(name)
    assert len(uid) <= 40
    assert re.fullmatch(r"[A-Za-z0-9_-]+", uid)
    assert dashboard_uid("a" * 60) != dashboard_uid("a" * 59 + "b")
