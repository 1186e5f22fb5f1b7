"""The chaos alert check: promtool's expanding notation, recorded scrapes as input series (history, stale
markers, aftermath, timestamps), the shrunk SLO windows, and one whole check through promtool."""

from __future__ import annotations

import itertools
import math
import shutil
from pathlib import Path

import pytest

from processor.chaos.alerts import (
    EVALUATION_INTERVAL_SECONDS,
    AlertVerdict,
    aftermath_seconds,
    check_alerts,
    history_seconds,
    shrunk,
)
from processor.chaos.record import Sample, Series
from processor.chaos.series import Clock, expand, input_series
from processor.observability.scrape import Scrape
from processor.topology.topology import load_topology

T0 = 1_000_000.0


def scrape(**values: float) -> Scrape:
    """A scrape with one unlabelled sample per metric name (and ``lag`` as a labelled status)."""
    return Scrape({name: {(): value} for name, value in values.items()})


def test_expand_writes_runs_missing_and_stale() -> None:
    assert expand([1, 1, 1]) == "1+0x2"
    assert expand([0, 2, 4, 6]) == "0+2x3"
    assert expand([5, 3, 1]) == "5-2x2"
    assert expand([None, None, 7]) == "_x2 7"
    assert expand([1, "stale"]) == "1 stale"
    assert expand([0.5]) == "0.5"
    # A run of Inf has no step (Inf - Inf is NaN): each is written out, and the run after it starts afresh.
    assert expand([math.inf, math.inf, 3, 3]) == "Inf Inf 3+0x1"
    assert expand([1, 2, math.inf]) == "1+1x1 Inf"


def test_expand_compresses_a_float_ramp_exactly_enough() -> None:
    rate = 49.1817256026
    text = expand([rate * s for s in range(600)])
    assert text.count("x") == 1
    start, rest = text.split("+")
    step, count = rest.split("x")
    assert float(start) == 0
    assert abs(float(step) - rate) < 1e-9
    assert int(count) == 599


def test_shrunk_windows_make_the_pages_minutes_long() -> None:
    orders = load_topology("topologies.orders")
    copy = shrunk(orders)
    assert [s.window for s in orders.slos] == ["30d"] * 3
    assert {s.window for s in copy.slos} == {"1d"}
    pages = [(p.long, p.short) for p in copy.slos[0].burn_windows() if p.severity == "page"]
    assert pages == [("2m", "1m"), ("12m", "1m")]
    assert history_seconds(copy) == 720
    assert aftermath_seconds(copy) == 12 * 60 + 180
    assert copy.handlers is orders.handlers


def series(name: str, samples: list[tuple[float, Scrape]], ended_at: float | None = None) -> Series:
    return Series(name, "worker", f"127.0.0.1:{len(name)}", T0, [Sample(at, s) for at, s in samples], ended_at)


def values_of(rows: list[dict[str, str]], metric: str) -> str:
    return next(r["values"] for r in rows if r["series"].startswith(metric + "{"))


def test_counters_get_their_steady_rate_as_history_and_stay_flat_after() -> None:
    worker = series("w", [(T0 + s, scrape(processor_events_total=10.0 * max(0, s - 2))) for s in range(8)])
    clock = Clock(T0, T0 + 7, history=5, aftermath=3, steady=(T0 + 2, T0 + 6))
    rows = input_series([worker], {"processor_events_total"}, clock)
    assert rows[0]["series"] == 'processor_events_total{instance="127.0.0.1:1",job="processor"}'
    # history 0, 10, .. 40 (5 steps at 10/s), then the recording offset by 50, then flat for the aftermath
    assert expand([10.0 * s for s in range(5)] + [50, 50, 50, 60, 70, 80, 90, 100, 100, 100, 100]) == rows[0]["values"]


def slow_start(seconds: int, rate: int = 100, slow: int = 10, slow_for: int = 4) -> list[tuple[float, Scrape]]:
    """A worker's scrapes: ``rate`` events a second, ``slow`` of them a second over 0.5 s in the first
    ``slow_for`` seconds (a cold worker's first batches), and one dead letter a second throughout."""
    out = []
    for s in range(seconds):
        fast = sum(rate - (slow if i < slow_for else 0) for i in range(s))
        labels = (("handler", "charge_payment"), ("topology", "orders"))
        out.append((T0 + s, Scrape({
            "processor_processing_seconds_bucket": {(*labels, ("le", "0.5")): float(fast),
                                                    (*labels, ("le", "+Inf")): float(rate * s)},
            "processor_processing_seconds_count": {labels: float(rate * s)},
            "processor_events_total": {(*labels, ("outcome", "success")): float((rate - 1) * s),
                                       (*labels, ("outcome", "dead_lettered")): float(s)},
            "processor_monitor_last_run_timestamp_seconds": {(): T0 + s},
        })))
    return out


def test_the_history_has_the_steady_traffic_but_no_slow_or_failed_event() -> None:
    worker = series("w", slow_start(8))
    clock = Clock(T0, T0 + 7, history=3, aftermath=1, steady=(T0, T0 + 4))
    names = {"processor_processing_seconds_bucket", "processor_processing_seconds_count", "processor_events_total"}
    rows = input_series([worker], names, clock)

    def values(*parts: str) -> str:
        return next(r["values"] for r in rows if all(part in r["series"] for part in parts))

    # every bucket, +Inf and 0.5 alike, grows with the count's 100/s in the history; the recording keeps
    # its 10 slow events a second; the dead letters do not grow in the history, the successes do (99/s)
    o, good = 300, 297
    assert values("_count") == expand([0, 100, 200] + [o + 100 * s for s in range(8)] + [o + 700])
    assert values('le="+Inf"') == values("_count")
    assert values('le="0.5"') == expand([0, 100, 200] + [o + 100 * s - 10 * min(s, 4) for s in range(8)] + [o + 660])
    assert values("dead_lettered") == expand([0, 0, 0, *list(range(8)), 7])
    assert values('outcome="success"') == expand([0, 99, 198] + [good + 99 * s for s in range(8)] + [good + 693])


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_slow_first_batches_in_the_steady_load_do_not_page_from_the_history(tmp_path: Path) -> None:
    """A tenth of the steady load's events over the latency objective (its first 4 s, as a cold worker's
    first batches can be): at their own rate the history paged the latency burn at -715 s (issue 26)."""
    orders = load_topology("topologies.orders")
    worker = series("w", slow_start(60, slow=10, slow_for=4))
    verdict = check_alerts(orders, [worker], T0, T0 + 59, tmp_path, pages=(), may_page=(), steady=(T0, T0 + 4))
    assert verdict.ok, verdict.summary() + " " + verdict.detail
    assert not verdict.fired


def _promtool_expansion(text: str) -> list[float]:
    # As promtool reads ``a+bxn``: n + 1 values, each the last plus b.
    out: list[float] = []
    for token in text.split():
        if "x" not in token:
            out.append(float(token))
            continue
        ramp, count = token.split("x")
        start, _, step = ramp.partition("+")
        value = float(start)
        for _ in range(int(count) + 1):
            out.append(value)
            value += float(step or 0)
    return out


def test_the_recording_never_starts_below_the_history_ramp() -> None:
    """A rate printed to 12 digits, expanded over 720 steps, ended 3.6e-8 above the first recorded value: a
    counter reset to rate(), which hid a latency page (every recorded event slow) behind the whole counter."""
    rate = 15.95238193876543
    worker = series("w", [(T0 + s, scrape(processor_events_total=rate * s)) for s in range(10)])
    clock = Clock(T0, T0 + 9, history=720, aftermath=2, steady=(T0, T0 + 9))
    values = _promtool_expansion(input_series([worker], {"processor_events_total"}, clock)[0]["values"])
    assert len(values) == 720 + 10 + 2
    assert all(b >= a for a, b in itertools.pairwise(values)), "a counter reset at the seam"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_a_fault_that_lasts_the_load_still_pages_through_the_history(tmp_path: Path) -> None:
    """Every event over the objective from the first (the load's own rate as history, all of it good)."""
    orders = load_topology("topologies.orders")
    worker = series("w", slow_start(20, rate=30, slow=30, slow_for=20))
    verdict = check_alerts(orders, [worker], T0, T0 + 19, tmp_path, pages=("ProcessorLatencyBudgetBurn",),
                           may_page=(), steady=(T0, T0 + 19))
    assert verdict.ok, verdict.summary() + " " + verdict.detail


def test_a_stopped_process_goes_stale_and_a_late_one_has_no_history() -> None:
    early = series("early", [(T0 + s, scrape(processor_dependency_up=1)) for s in range(3)], ended_at=T0 + 3)
    late = series("late", [(T0 + s, scrape(processor_dependency_up=0)) for s in range(4, 6)])
    rows = input_series([early, late], {"processor_dependency_up"}, Clock(T0, T0 + 5, history=2, aftermath=2))
    assert [r["values"] for r in rows] == [expand([1, 1, 1, 1, 1, "stale"]), expand([None] * 6 + [0, 0, 0, 0])]


def test_timestamps_move_onto_promtools_clock_and_keep_ticking() -> None:
    stamp = "processor_monitor_last_run_timestamp_seconds"
    monitor = series("monitor", [(T0, scrape(**{stamp: 0.0})), (T0 + 1, scrape(**{stamp: T0 + 1})),
                                 (T0 + 2, scrape(**{stamp: T0 + 2}))])
    rows = input_series([monitor], {stamp}, Clock(T0, T0 + 2, history=3, aftermath=2))
    # unset (0) at the first scrape is no stamp; the first real one is step 4, the history and the
    # aftermath tick with promtool's clock, so time() - stamp stays 0 throughout
    assert rows[0]["values"] == expand([float(s) for s in range(8)]) == "0+1x7"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_a_stopped_group_pages_and_clears(tmp_path: Path) -> None:
    """The monitor rates a group STOP for 90 s: ProcessorConsumerLagStop (for: 1m) fires, then clears."""
    orders = load_topology("topologies.orders")
    status = []
    for s in range(150):
        stop = 20 <= s < 110
        status.append((T0 + s, Scrape({"processor_consumer_lag_status": {
            (("group", "orders.charge_payment"), ("status", "STOP")): 1.0 if stop else 0.0,
            (("group", "orders.charge_payment"), ("status", "OK")): 0.0 if stop else 1.0,
        }, "processor_monitor_last_run_timestamp_seconds": {(): T0 + s}})))
    monitor = Series("monitor", "monitor", "127.0.0.1:9", T0, [Sample(at, sc) for at, sc in status])
    verdict = check_alerts(orders, [monitor], T0, T0 + 149, tmp_path, pages={"ProcessorConsumerLagStop"}, may_page=())
    assert verdict.ok, verdict.detail
    first, last = verdict.fired[("ProcessorConsumerLagStop", "page")]
    assert 80 <= first <= 90
    assert 105 <= last <= 115
    assert (tmp_path / "alerts_test.yml").exists()
    assert (tmp_path / "rules.yml").exists()
    quiet = check_alerts(orders, [monitor], T0, T0 + 149, tmp_path, pages=(), may_page=())
    assert not quiet.ok
    assert quiet.unexpected_pages == ("ProcessorConsumerLagStop",)


def test_a_series_that_appears_later_gets_no_history() -> None:
    lag = "processor_consumer_lag_seconds"
    late = {(("partition", "0"),): 44.0}
    monitor = series("m", [(T0, Scrape({lag: {}})), (T0 + 1, Scrape({lag: late})), (T0 + 2, Scrape({lag: late}))])
    rows = input_series([monitor], {lag}, Clock(T0, T0 + 2, history=3, aftermath=1))
    assert rows[0]["values"] == expand([None, None, None, None, 44, 44, 44])


def test_a_verdict_signs_its_times_so_a_page_in_the_replayed_history_reads_as_before_the_recording() -> None:
    verdict = AlertVerdict(
        fired={("LatencyBurn", "page"): (-715.0, -30.0), ("StoppedGroup", "page"): (42.0, 100.0)},
        expected=("StoppedGroup",), unexpected_pages=(), missing_pages=(), promtool_passed=True, detail="",
    )
    step = EVALUATION_INTERVAL_SECONDS
    assert verdict.summary() == (f"ok: LatencyBurn paged -715s, cleared {-30 + step:+.0f}s; "
                                 f"StoppedGroup paged +42s, cleared +{100 + step:.0f}s")
