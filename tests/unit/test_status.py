"""`processor status` without a worker's metrics: what only a worker knows is null, and said on one line."""

from __future__ import annotations

import math

from rich.console import Console

from processor.ops.status import MISSING_WITHOUT_METRICS, LagRow, render, without_metrics
from processor.topology.topology import load_topology

URL = "http://127.0.0.1:9100/metrics"


def test_without_metrics_every_worker_field_is_null_and_the_lag_is_kept() -> None:
    orders = load_topology("topologies.orders")
    lag = [LagRow("orders.charge_payment", "orders.order_created", 0, 137, 4.5)]
    snap = without_metrics(orders, URL, "Connection refused", lag, {"orders.charge_payment": "STOP"},
                           {"orders.charge_payment": {"threshold": 90.0, "drain": math.inf}})
    doc = snap.as_json()
    assert doc["lag"] == [{"group": "orders.charge_payment", "topic": "orders.order_created", "partition": 0,
                           "messages": 137, "seconds": 4.5}]
    assert doc["groups"] == {"orders.charge_payment": "STOP"}
    assert doc["forecasts"] == {"orders.charge_payment": {"threshold": 90.0, "drain": math.inf}}
    console = Console(width=250, record=True)
    console.print(render(snap))
    row = next(line for line in console.export_text().splitlines() if "orders.charge_payment" in line
               and "STOP" in line)
    assert [cell.strip() for cell in row.split("│")][1:5] == ["orders.charge_payment", "STOP", "90 s", "never"]
    assert [h["handler"] for h in doc["handlers"]] == [h.name for h in orders.handlers]
    assert all(v is None for h in doc["handlers"] for k, v in h.items() if k != "handler")
    assert [(s["slo"], s["budget_remaining"], s["burn_rates"]) for s in doc["slos"]] == [
        (slo.label("orders"), None, None) for slo in orders.slos]
    assert doc["breakers"] is None
    assert doc["missing"] == list(MISSING_WITHOUT_METRICS)
    line = snap.missing_line()
    assert line is not None
    assert "\n" not in line
    assert line.startswith(f"no worker's /metrics answered at {URL} (Connection refused): ")
    assert all(field in line for field in MISSING_WITHOUT_METRICS)


def test_the_view_shows_the_missing_fields_as_dashes_and_says_why() -> None:
    orders = load_topology("topologies.orders")
    snap = without_metrics(orders, URL, "Connection refused", [], {}, {})
    console = Console(width=250, record=True)
    console.print(render(snap))
    text = console.export_text()
    assert "no worker's /metrics answered" in text
    assert "breakers: -" in text
    charge = next(line for line in text.splitlines() if "charge_payment" in line)
    assert [cell for cell in charge.split("charge_payment")[1].split() if cell != "│"] == ["-"] * 7


def test_with_metrics_nothing_is_missing() -> None:
    from processor.ops.status import Snapshot

    assert Snapshot("orders", 0.0, "worker metrics", metrics_url=URL).missing_line() is None
