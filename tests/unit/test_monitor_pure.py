from __future__ import annotations

import math
import random
from typing import Any

import pytest
from prometheus_client import generate_latest

from processor.observability.budget import BudgetTracker
from processor.observability.metrics import Metrics
from processor.observability.monitor import RollingQuantile
from processor.observability.scrape import histogram_quantile, parse
from processor.topology.slo import SLO
from processor.topology.topology import Context, Output, Topology

# -- RollingQuantile ---------------------------------------------------------------------------------


def test_rolling_p99_of_a_known_distribution() -> None:
    window = RollingQuantile(seconds=60)
    values = list(range(1, 1001))
    random.Random(3).shuffle(values)
    for i, v in enumerate(values):
        window.observe(float(v), now=1000.0 + i / 100)  # spread over 10 seconds
    p99 = window.quantile(0.99, now=1010.0)
    assert p99 is not None
    assert 990 <= p99 <= 991
    p50 = window.quantile(0.5, now=1010.0)
    assert p50 is not None
    assert 500 <= p50 <= 501


def test_rolling_quantile_empty_is_none() -> None:
    assert RollingQuantile().quantile(0.99, now=5.0) is None


def test_rolling_quantile_old_seconds_fall_out() -> None:
    window = RollingQuantile(seconds=60)
    for _ in range(50):
        window.observe(9.0, now=1000.2)  # a slow burst
    for _ in range(50):
        window.observe(0.01, now=1030.5)
    assert window.quantile(0.99, now=1059.9) == 9.0  # the burst is 59.7 s old: still in the window
    assert window.quantile(0.99, now=1060.0) == 0.01  # second 1000 has left the last 60 seconds
    assert window.quantile(0.99, now=1089.9) == 0.01
    assert window.quantile(0.99, now=1090.0) is None  # everything is gone


def test_rolling_quantile_caps_memory_per_second_but_stays_close() -> None:
    cap = 500
    window = RollingQuantile(seconds=60, per_second=cap, rng=random.Random(11))
    n = 20_000
    for i in range(n):  # increasing within the second: keeping only the first `cap` would be far off
        window.observe(i / n, now=2000.0 + i / (2 * n))
    kept = sum(len(values) for _, values, _ in window._buckets)
    assert kept == cap
    p99 = window.quantile(0.99, now=2000.9)
    p50 = window.quantile(0.5, now=2000.9)
    assert p99 is not None
    assert p50 is not None
    assert abs(p99 - 0.99) < 0.02
    assert abs(p50 - 0.5) < 0.06


def test_rolling_quantile_cap_is_per_second() -> None:
    window = RollingQuantile(seconds=60, per_second=10, rng=random.Random(1))
    for second in range(5):
        for _ in range(100):
            window.observe(float(second), now=3000.0 + second)
    assert sum(len(values) for _, values, _ in window._buckets) == 50
    assert window.quantile(0.0, now=3004.5) == 0.0
    assert window.quantile(0.99, now=3004.5) == 4.0


# -- BudgetTracker -----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now


async def _noop(event: dict[str, Any], ctx: Context) -> list[Output]:
    return []


def budget_topology() -> Topology:
    topology = Topology("shop", slos=(
        SLO("delivery", "delivery", objective=0.99),
        SLO("pay-latency", "latency", objective=0.9, threshold="100ms", handler="pay"),
        SLO("lag", "lag", objective=0.9, threshold="30s"),
    ))
    topology.handler(source="orders", name="pay")(_noop)
    topology.handler(source="orders", name="ship")(_noop)
    return topology


def burn(metrics: Metrics, slo: str, window: str) -> float | None:
    return metrics.registry.get_sample_value("processor_slo_burn_rate", {"slo": f"shop:{slo}", "window": window})


def remaining(metrics: Metrics, slo: str) -> float | None:
    return metrics.registry.get_sample_value("processor_slo_error_budget_remaining_ratio", {"slo": f"shop:{slo}"})


def test_delivery_budget_and_burn_rate() -> None:
    metrics, clock = Metrics(), Clock()
    tracker = BudgetTracker(budget_topology(), metrics, clock=clock)
    tracker.tick(None)
    assert remaining(metrics, "delivery") == 1.0
    assert burn(metrics, "delivery", "5m") == 0.0

    clock.now += 100
    metrics.events.labels("shop", "pay", "success").inc(490)
    metrics.events.labels("shop", "pay", "dead_lettered").inc(10)
    metrics.events.labels("shop", "ship", "success").inc(500)
    metrics.events.labels("shop", "ship", "duplicate").inc(1000)  # not part of the delivery SLI
    metrics.events.labels("shop", "ship", "invalid").inc(1000)  # nor is invalid input
    tracker.tick(None)
    # 10 bad of 1000: an error ratio of 1% against a 1% budget
    assert remaining(metrics, "delivery") == pytest.approx(0.0, abs=1e-9)
    assert burn(metrics, "delivery", "5m") == pytest.approx(1.0)
    assert burn(metrics, "delivery", "1h") == pytest.approx(1.0)

    clock.now += 400  # 500 s after start, 400 s after the bad events
    metrics.events.labels("shop", "ship", "success").inc(1000)
    tracker.tick(None)
    assert remaining(metrics, "delivery") == pytest.approx(0.5)  # 10 of 2000
    assert burn(metrics, "delivery", "5m") == pytest.approx(0.0)  # the last 5 minutes were clean
    assert burn(metrics, "delivery", "1h") == pytest.approx(0.5)  # an hour covers everything seen


def test_burn_rate_over_a_short_window_sees_a_recent_spike() -> None:
    metrics, clock = Metrics(), Clock()
    tracker = BudgetTracker(budget_topology(), metrics, clock=clock)
    tracker.tick(None)
    clock.now += 3600
    metrics.events.labels("shop", "pay", "success").inc(10_000)
    tracker.tick(None)
    clock.now += 300
    metrics.events.labels("shop", "pay", "success").inc(80)
    metrics.events.labels("shop", "pay", "dead_lettered").inc(20)
    tracker.tick(None)
    assert burn(metrics, "delivery", "5m") == pytest.approx(20.0)  # 20% errors / 1% budget
    assert burn(metrics, "delivery", "1h") == pytest.approx((20 / 10_100) / 0.01)
    assert burn(metrics, "delivery", "6h") == pytest.approx((20 / 10_100) / 0.01)


def test_latency_slo_counts_only_its_handler_and_its_threshold() -> None:
    metrics, clock = Metrics(), Clock()
    tracker = BudgetTracker(budget_topology(), metrics, clock=clock)
    tracker.tick(None)
    clock.now += 60
    pay = metrics.processing.labels("shop", "pay")
    for _ in range(8):
        pay.observe(0.05)
    pay.observe(0.1)  # exactly the threshold: within it (le="0.1")
    for _ in range(3):
        pay.observe(0.3)
    for _ in range(50):
        metrics.processing.labels("shop", "ship").observe(5.0)  # another handler: not this SLO
    tracker.tick(None)
    # 3 of 12 slower than 100 ms: 25% errors against a 10% budget
    assert burn(metrics, "pay-latency", "5m") == pytest.approx(2.5)
    assert remaining(metrics, "pay-latency") == pytest.approx(1 - 2.5)


def test_lag_slo_counts_time_above_the_threshold() -> None:
    metrics, clock = Metrics(), Clock()
    tracker = BudgetTracker(budget_topology(), metrics, clock=clock)
    tracker.tick(5.0)
    assert remaining(metrics, "lag") == 1.0  # no time seen yet
    clock.now += 60
    tracker.tick(10.0)  # below 30 s: a good minute
    assert remaining(metrics, "lag") == pytest.approx(1.0)
    assert burn(metrics, "lag", "5m") == pytest.approx(0.0)
    clock.now += 60
    tracker.tick(45.0)  # above: a bad minute
    assert remaining(metrics, "lag") == pytest.approx(1 - 0.5 / 0.1)
    assert burn(metrics, "lag", "5m") == pytest.approx(5.0)
    clock.now += 120
    tracker.tick(30.0)  # exactly the threshold is not above it: two good minutes
    assert remaining(metrics, "lag") == pytest.approx(1 - 0.25 / 0.1)
    assert burn(metrics, "lag", "5m") == pytest.approx(2.5)


def test_lag_slo_not_measured_here_is_not_exported() -> None:
    metrics, clock = Metrics(), Clock()
    tracker = BudgetTracker(budget_topology(), metrics, clock=clock)
    tracker.tick(None)
    clock.now += 60
    tracker.tick(None)
    assert remaining(metrics, "lag") is None
    assert burn(metrics, "lag", "5m") is None
    assert remaining(metrics, "delivery") == 1.0


def test_lag_slo_counts_no_time_before_its_first_measurement() -> None:
    metrics, clock = Metrics(), Clock()
    tracker = BudgetTracker(budget_topology(), metrics, clock=clock)
    tracker.tick(None)  # not the measuring worker yet
    clock.now += 600
    tracker.tick(100.0)  # first measurement: no time has been seen yet
    assert remaining(metrics, "lag") == 1.0
    assert burn(metrics, "lag", "5m") == 0.0
    clock.now += 60
    tracker.tick(0.0)  # one good minute
    clock.now += 60
    tracker.tick(100.0)  # one bad minute
    assert remaining(metrics, "lag") == pytest.approx(1 - 0.5 / 0.1)


def test_a_lag_burn_no_longer_measured_here_is_no_burn_once_its_window_passes() -> None:
    topology = budget_topology()
    lag = next(slo for slo in topology.slos if slo.name == "lag")
    metrics, clock = Metrics(), Clock()
    tracker = BudgetTracker(topology, metrics, clock=clock)
    tracker.tick(0.0)
    clock.now += 60
    tracker.tick(100.0)  # a bad minute, measured here
    assert tracker.burn(lag, 300)[0] == pytest.approx(10.0)
    clock.now += 200
    tracker.tick(None)  # the monitor's lease went to another worker
    assert tracker.burn(lag, 300)[0] == pytest.approx(10.0)  # still the last 5 minutes' burn
    clock.now += 120
    tracker.tick(None)
    assert tracker.burn(lag, 300) == (0.0, 0.0)  # nothing measured in 5 minutes: no burn to act on


# -- histogram_quantile ------------------------------------------------------------------------------


def test_histogram_quantile_interpolates_like_promql() -> None:
    buckets = {0.1: 10.0, 0.5: 30.0, 1.0: 40.0, math.inf: 40.0}
    # q=0.5: rank 20 lies in (0.1, 0.5], 10 of its 20 observations in: 0.1 + 0.4 * 10/20
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.3)
    # q=0.9: rank 36 lies in (0.5, 1.0]: 0.5 + 0.5 * 6/10
    assert histogram_quantile(0.9, buckets) == pytest.approx(0.8)
    # q=0.05: rank 2 in the first bucket, whose lower bound is 0: 0.1 * 2/10
    assert histogram_quantile(0.05, buckets) == pytest.approx(0.02)
    # rank exactly at a bucket's count: that bucket's upper bound
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.1)


def test_histogram_quantile_in_the_inf_bucket_is_the_highest_finite_bound() -> None:
    buckets = {0.1: 10.0, 0.5: 20.0, math.inf: 40.0}
    assert histogram_quantile(0.9, buckets) == 0.5
    assert histogram_quantile(0.4, buckets) == pytest.approx(0.1 + 0.4 * 6 / 10)


@pytest.mark.parametrize("buckets", [{}, {0.1: 0.0, math.inf: 0.0}])
def test_histogram_quantile_without_observations_is_nan(buckets: dict[float, float]) -> None:
    assert math.isnan(histogram_quantile(0.99, buckets))


def test_scrape_quantile_reads_a_real_exposition() -> None:
    metrics = Metrics()
    hist = metrics.processing.labels("shop", "pay")
    for _ in range(90):
        hist.observe(0.004)  # bucket (0.0025, 0.005]
    for _ in range(10):
        hist.observe(0.2)  # bucket (0.15, 0.2]
    metrics.processing.labels("shop", "ship").observe(50.0)
    scraped = parse(generate_latest(metrics.registry).decode())
    # rank 50 of 90 in (0.0025, 0.005]: 0.0025 + 0.0025 * 50/90
    assert scraped.quantile(0.5, "processor_processing_seconds", handler="pay") == pytest.approx(
        0.0025 + 0.0025 * 50 / 90)
    # rank 99: the 9th of 10 in (0.15, 0.2]
    assert scraped.quantile(0.99, "processor_processing_seconds", handler="pay") == pytest.approx(
        0.15 + 0.05 * 9 / 10)
    assert scraped.quantile(0.5, "processor_processing_seconds", handler="ship") == pytest.approx(45.0)


def test_scrape_quantile_since_an_earlier_scrape_counts_only_what_came_after_it() -> None:
    metrics = Metrics()
    lag = metrics.event_loop_lag.labels("shop")
    for _ in range(50):
        lag.observe(2.0)  # before: a slow start, (1.5, 2.5]
    earlier = parse(generate_latest(metrics.registry).decode())
    for _ in range(100):
        lag.observe(0.004)  # (0.0025, 0.005]
    later = parse(generate_latest(metrics.registry).decode())
    name = "processor_event_loop_lag_seconds"
    assert later.quantile(0.99, name, since=earlier, topology="shop") == pytest.approx(0.0025 + 0.0025 * 99 / 100)
    assert later.quantile(0.99, name, topology="shop") > 1.5  # all of it: the slow start is in it
