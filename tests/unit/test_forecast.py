"""The lag forecast's arithmetic: a least-squares trend, the time to the threshold and to drained."""

from __future__ import annotations

import math

import pytest

from processor.observability.forecast import LagTrend, forecast, lag_thresholds
from processor.topology.slo import SLO
from processor.topology.topology import Topology


def test_a_stopped_consumer_crosses_the_threshold_in_what_is_left_of_it() -> None:
    ahead = forecast([(0, 10.0), (5, 15.0), (10, 20.0)], threshold=30.0)
    assert ahead is not None
    assert ahead.slope == pytest.approx(1.0)
    assert ahead.to_threshold == pytest.approx(10.0)
    assert math.isinf(ahead.to_drain)


def test_a_draining_backlog_forecasts_when_it_is_empty_and_never_the_threshold() -> None:
    ahead = forecast([(0, 40.0), (5, 30.0), (10, 20.0)], threshold=30.0)
    assert ahead is not None
    assert ahead.to_drain == pytest.approx(10.0)  # 20 s of lag shrinking 2 s a second
    assert math.isinf(ahead.to_threshold)


def test_over_the_threshold_already_is_zero_and_a_flat_lag_is_never() -> None:
    over = forecast([(0, 31.0), (5, 31.0), (10, 31.0)], threshold=30.0)
    flat = forecast([(0, 0.2), (5, 0.2), (10, 0.2)], threshold=30.0)
    assert over is not None
    assert flat is not None
    assert over.to_threshold == 0.0
    assert math.isinf(flat.to_threshold)
    assert math.isinf(flat.to_drain)


def test_the_tail_of_a_drained_burst_forecasts_no_crossing() -> None:
    # Up from 0 to 60 s over three minutes, then drained to about a second and flat for the last minute and a
    # half: over the five minutes the slope is still positive, lately it is not.
    rise = [(t, t / 3.0) for t in range(0, 180, 5)]
    tail = [(t, 1.0) for t in range(180, 300, 5)]
    ahead = forecast(rise + tail, threshold=30.0)
    assert ahead is not None
    assert math.isinf(ahead.to_threshold)
    caught_up = forecast([(0, 5.0), (5, 3.0), (10, 0.0)], threshold=30.0)
    assert caught_up is not None
    assert caught_up.to_drain == 0.0
    assert math.isinf(caught_up.to_threshold)


def test_a_consumer_that_stops_after_minutes_of_flat_lag_is_forecast_at_its_new_rate() -> None:
    # Four minutes at 0.5 s, sampled every 5 s, then stopped for a minute: the lag grows a second a second.
    flat = [(float(t), 0.5) for t in range(0, 240, 5)]
    stopped = [(240.0 + t, 0.5 + t) for t in range(5, 65, 5)]
    ahead = forecast(flat + stopped, threshold=120.0)
    assert ahead is not None
    assert ahead.to_threshold == pytest.approx(120.0 - 60.5, rel=0.1)  # not the five minutes' slope: 10x later


def test_too_few_samples_or_no_time_between_them_forecast_nothing() -> None:
    assert forecast([(0, 1.0), (5, 2.0)], threshold=30.0) is None
    assert forecast([(5, 1.0), (5, 2.0), (5, 3.0)], threshold=30.0) is None


def test_jitter_of_a_healthy_consumer_forecasts_no_crossing_within_hours() -> None:
    # Five minutes of samples every 5 s jittering between 0.1 s and 0.5 s, the last ones the highest.
    samples = [(t * 5.0, 0.1 + 0.4 * ((t * 7) % 11) / 10) for t in range(55)] + [(275.0 + 5 * i, 0.5) for i in range(6)]
    trend = LagTrend()
    for now, lag in samples:
        trend.add("g", now, lag)
    ahead = trend.forecast("g", threshold=30.0)
    assert ahead is not None
    assert ahead.to_threshold > 6 * 3600


def test_the_trend_keeps_its_window_only() -> None:
    trend = LagTrend(window_seconds=10)
    for now, lag in [(0, 100.0), (5, 0.0), (10, 1.0), (15, 2.0), (20, 3.0)]:
        trend.add("g", now, lag)
    ahead = trend.forecast("g", threshold=None)
    assert ahead is not None
    assert ahead.slope == pytest.approx(0.2)  # the 100 s sample at t=0 is out of the window


def test_thresholds_come_from_the_lag_slos_that_cover_each_group() -> None:
    topology = Topology("shop", slos=(SLO("lag", sli="lag", objective=0.99, threshold="30s"),
                                      SLO("fast", sli="lag", objective=0.99, threshold="5s", handler="pay"),
                                      SLO("late", sli="latency", objective=0.99, threshold="0.5s")))
    for name in ("pay", "ship"):
        topology.handler(source="orders", event_id="id", name=name)(_handle)
    assert lag_thresholds(topology) == {"shop.pay": 5.0, "shop.ship": 30.0}


async def _handle(event: dict[str, object], ctx: object) -> list[object]:
    return []
