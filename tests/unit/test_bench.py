"""`processor bench`: the pure parts (percentiles, ratios, table, JSON shape, /proc parsing, the events)."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import math
import os
import time
from pathlib import Path

import orjson
import pytest

import processor
from processor.bench import report as br
from processor.bench.command import (
    EMBEDDED_FETCH_MAX_WAIT_MS,
    BenchOptions,
    brokers_to_run,
    describe_backend,
    missing_servers,
    paced_fetch_wait,
    shortfalls,
    tansu_latency_note,
)
from processor.bench.latency import split_in_thirds, third_of
from processor.bench.loops import LoopSpec
from processor.bench.proc import (
    CLOCK_TICKS_PER_SECOND,
    CpuContention,
    CpuSampler,
    CpuSnapshot,
    SpeedProbe,
    cpu_contention,
    cpu_share_between,
    cpu_snapshot,
    parse_cpu_ticks,
    parse_machine_cpu,
    parse_probe,
    parse_schedstat,
    parse_status_kb,
    read_json,
    write_json,
)
from processor.bench.run import Run, child_env, event_value
from processor.config import Settings
from processor.dev.devstack import BrokerKind, DevStack
from processor.dev.kraft import KAFKA_VERSION
from processor.dev.servers import ServerProcess
from processor.errors import ConfigError
from processor.runtime.decode import Decoder, compile_schema
from processor.topology.topology import Context, Output

N = 1000


def ok_row(key: str, rate: float, **extra: float) -> br.Row:
    return br.Row(key, f"variant {key}", events=N, distinct=N, seconds=N / rate, events_per_s=rate,
                  processing_p50_ms=extra.get("p50", 1.0), processing_p99_ms=extra.get("p99", 2.0),
                  e2e_p50_ms=10.0, e2e_p99_ms=20.0, peak_rss_mb=50.0, cpu_seconds_per_1k=0.1)


def report(*rows: br.Row, latency: br.LatencyResult | None = None) -> br.Report:
    return br.Report(events=N, partitions=3, payload_bytes=200, backend="test", run_id="bench-test", rows=rows,
                     latency=latency, notes=("a note",))


FULL = report(
    ok_row(br.PLAIN, 20_000.0), ok_row(br.FAUST_CONSUME, 5_000.0), ok_row(br.FAUST, 1_000.0),
    ok_row(br.PIPELINE, 4_000.0), ok_row(br.TRACED, 3_000.0),
    br.Row(br.QUIX, "Quix Streams", status=br.SKIPPED, note="quixstreams is not installed"),
)


# -- maths -------------------------------------------------------------------------------------------------


def test_percentile_interpolates_between_closest_ranks() -> None:
    assert br.percentile([4.0, 1.0, 3.0, 2.0], 0.5) == pytest.approx(2.5)
    assert br.percentile([1.0, 2.0, 3.0, 4.0], 0.99) == pytest.approx(3.97)
    assert br.percentile([1.0, 2.0, 3.0, 4.0], 0.0) == 1.0
    assert br.percentile([1.0, 2.0, 3.0, 4.0], 1.0) == 4.0
    assert br.percentile([7.0], 0.99) == 7.0
    assert br.percentile(list(map(float, range(101))), 0.99) == pytest.approx(99.0)


def test_percentile_of_nothing_is_none_and_q_is_checked() -> None:
    assert br.percentile([], 0.5) is None
    with pytest.raises(ValueError, match="quantile"):
        br.percentile([1.0], 1.5)


def test_ratio_is_none_when_a_side_is_missing_or_not_positive() -> None:
    assert br.ratio(3.0, 1.5) == 2.0
    assert br.ratio(None, 1.0) is None
    assert br.ratio(1.0, None) is None
    assert br.ratio(1.0, 0.0) is None
    assert br.ratio(math.nan, 1.0) is None
    assert br.ratio(1.0, math.nan) is None


def test_ratios_set_the_pipeline_against_every_baseline() -> None:
    assert FULL.ratios() == {"c/a": 0.2, "c/b": 4.0, "c/b0": 0.8, "c/e": None}


def test_targets_report_ratio_minimum_and_verdict() -> None:
    targets = FULL.targets()
    assert targets["c >= 3x b"] == {"ratio": 4.0, "minimum": 3.0, "met": True}
    assert targets["c >= 0.8x b0"]["met"] is True
    slow = report(ok_row(br.FAUST, 1_000.0), ok_row(br.PIPELINE, 2_000.0))
    assert slow.targets()["c >= 3x b"]["met"] is False
    assert slow.targets()["c >= 0.8x b0"] == {"ratio": None, "minimum": 0.8, "met": None}


def test_a_failed_row_counts_as_not_measured() -> None:
    failed = report(ok_row(br.PLAIN, 1_000.0), br.Row(br.PIPELINE, "pipeline", status=br.FAILED, note="boom"))
    assert failed.ratios()["c/a"] is None


# -- table -------------------------------------------------------------------------------------------------


def test_table_has_a_line_per_variant_ratios_targets_and_notes() -> None:
    text = br.render_table(FULL)
    lines = text.splitlines()
    assert len(lines) < 50
    for key in br.ORDER:
        assert any(line.startswith(f"({key}) ") for line in lines), key
    pipeline = next(line for line in lines if line.startswith("(c) "))
    assert "4000" in pipeline
    assert pipeline.split()[-2:] == [str(N), "-"]  # events, then the speed probe's loop (not measured here)
    assert "SKIPPED: quixstreams is not installed" in text
    assert "c/b 4.00" in text
    assert "c/e -" in text
    assert "c >= 3x b: met (4.00x)" in text
    assert "a note" in text


def test_table_shows_missing_values_as_dashes_and_failures_as_such() -> None:
    sparse = report(br.Row(br.FAUST_CONSUME, "consume only", events=N, distinct=N, events_per_s=5_000.0),
                    br.Row(br.PIPELINE, "pipeline", status=br.FAILED, note="exited with status 1"))
    text = br.render_table(sparse)
    consume = next(line for line in text.splitlines() if line.startswith("(b0) "))
    assert consume.split()[-9:] == ["5000", "-", "-", "-", "-", "-", "-", str(N), "-"]
    assert "FAILED: exited with status 1" in text
    assert "c >= 3x b: not measured" in text


def test_table_shows_the_latency_mode() -> None:
    latency = br.LatencyResult(target_rate=2000.0, achieved_rate=1999.0, events=N, distinct=N, e2e_p50_ms=12.0,
                               e2e_p99_ms=48.5, processing_p50_ms=4.0, processing_p99_ms=9.0, broker_p50_ms=7.0,
                               broker_p99_ms=31.0, machine_busy_share=0.79, worker_main_thread_wait_share=0.283,
                               worker_main_thread_run_share=0.814, loop_lag_p50_ms=1.5, loop_lag_p99_ms=42.0)
    with_latency = report(ok_row(br.PIPELINE, 4_000.0), latency=latency)
    text = br.render_table(with_latency)
    assert "latency mode (c at 2000/s" in text
    assert "p99 48.5 ms" in text
    assert ("the broker alone (the same load read by a plain consumer, in a run of its own) p50 7.0 ms, "
            "p99 31.0 ms") in text
    assert "meanwhile the machine's CPUs were 79% busy and the worker's main thread ran 81% of the time and waited " \
           "for a CPU 28%, its event loop ran timers late by p50 1.5 ms, p99 42.0 ms" in " ".join(text.split())
    # Every field, tuples as JSON lists.
    assert orjson.loads(orjson.dumps(with_latency.as_json()))["latency"] == orjson.loads(
        orjson.dumps(dataclasses.asdict(latency)))
    assert "by third" not in text  # not measured: nothing to show
    unknown = br.render_table(report(latency=dataclasses.replace(latency, machine_busy_share=None,
                                                                 worker_main_thread_wait_share=None,
                                                                 worker_main_thread_run_share=None)))
    assert "CPUs were - busy and the worker's main thread ran - of the time and waited for a CPU -," in " ".join(
        unknown.split())
    thirds = dataclasses.replace(latency, e2e_p99_by_third_ms=(40.0, 52.5, None),
                                 cpu_by_third={"worker": (0.5, 0.55, None), "broker": (0.271, 0.45, None),
                                               "redis": (None, None, None), "load": (0.1, 0.12, None)})
    shown = " ".join(br.render_table(report(latency=thirds)).split())
    assert ("by third of the run after warm-up: e2e p99 40.0 ms, 52.5 ms, -, CPU (share of a core) of the worker "
            "50%, 55%, -, the broker 27%, 45%, -, Redis -, -, -, the bench's own load (producer and reader) 10%, "
            "12%, -") in shown
    assert orjson.loads(orjson.dumps(report(latency=thirds).as_json()))["latency"]["cpu_by_third"] == {
        "worker": [0.5, 0.55, None], "broker": [0.271, 0.45, None], "redis": [None, None, None],
        "load": [0.1, 0.12, None]}
    assert "speed probe" not in shown  # not measured


def test_the_speed_probe_shows_as_a_column_and_on_the_latency_line_against_the_maximums_run() -> None:
    fast, slow = br.LoopSpeed(3.9, 4.1, 5.0, 4), br.LoopSpeed(4.0, 6.5, 6.9, 20)
    pipeline = dataclasses.replace(ok_row(br.PIPELINE, 4_000.0), cpu_speed=fast)
    latency = br.LatencyResult(target_rate=2000.0, achieved_rate=1999.0, events=N, distinct=N, e2e_p50_ms=12.0,
                               e2e_p99_ms=48.5, processing_p50_ms=4.0, processing_p99_ms=9.0, cpu_speed=slow)
    shown = report(pipeline, latency=latency)
    text = br.render_table(shown)
    assert next(line for line in text.splitlines() if line.startswith("(c) ")).split()[-1] == "4.1"
    assert ("the speed probe's loop took p10 4.0 ms, p50 6.5 ms, p90 6.9 ms (p50 4.1 ms in (c)'s throughput run)"
            in " ".join(text.split()))
    document = orjson.loads(orjson.dumps(shown.as_json()))
    assert document["latency"]["cpu_speed"] == {"p10_ms": 4.0, "p50_ms": 6.5, "p90_ms": 6.9, "samples": 20}
    assert next(r for r in document["rows"] if r["key"] == br.PIPELINE)["cpu_speed"]["p50_ms"] == 4.1


def test_loop_speed_takes_the_samples_of_the_span_or_the_nearest_one_for_a_short_run() -> None:
    samples = [(1000.0, 4.0), (1500.0, 6.0), (2000.0, 6.5), (2500.0, 3.9), (3000.0, 7.0)]
    speed = br.loop_speed(samples, 1400.0, 2600.0)
    assert speed is not None
    assert (speed.p50_ms, speed.samples) == (6.0, 3)
    assert speed.p10_ms == pytest.approx(4.32)
    assert speed.p90_ms == pytest.approx(6.4)
    short = br.loop_speed(samples, 2900.0, 3200.0)  # the one inside
    assert short == br.LoopSpeed(7.0, 7.0, 7.0, 1)
    between = br.loop_speed(samples, 1600.0, 1800.0)  # none inside: the nearest to its middle
    assert between == br.LoopSpeed(6.0, 6.0, 6.0, 1)
    assert br.loop_speed([], 0.0, 1.0) is None


def test_the_speed_probe_times_its_loop_twice_a_second_until_stopped(tmp_path: Path) -> None:
    probe = SpeedProbe(tmp_path / "probe.speed")
    time.sleep(1.3)
    samples = probe.stop()
    assert len(samples) >= 2
    assert all(0 < ms < 1000 for _, ms in samples)
    assert samples[0][0] < samples[1][0]
    assert probe.stop() == samples  # stopped: the same answer


def test_probe_lines_are_parsed_and_a_line_cut_short_is_left_out() -> None:
    assert parse_probe("1000 4.250\n1500 6.5\n2000") == [(1000.0, 4.25), (1500.0, 6.5)]


# -- JSON --------------------------------------------------------------------------------------------------


def test_the_embedded_broker_note_names_the_fetch_wait_and_the_growing_fetch() -> None:
    note = tansu_latency_note(20)
    assert "KAFKA_FETCH_MAX_WAIT_MS=20" in note
    assert "up to 10 ms of an event's e2e" in note
    assert "listing every record batch the partition holds" in note


def test_json_has_options_rows_ratios_targets_and_notes() -> None:
    document = orjson.loads(orjson.dumps(FULL.as_json()))
    assert document["options"] == {"events": N, "partitions": 3, "payload_bytes": 200}
    assert [r["key"] for r in document["rows"]] == list(br.ORDER)
    fields = {f.name for f in dataclasses.fields(br.Row)}
    assert all(set(r) == fields for r in document["rows"])
    assert document["rows"][3]["events_per_s"] == 4_000.0
    assert document["ratios"]["c/b"] == 4.0
    assert document["targets"]["c >= 3x b"]["met"] is True
    assert document["latency"] is None
    assert document["notes"] == ["a note"]


def test_finite_turns_nan_into_none() -> None:
    assert br.finite(math.nan) is None
    assert br.finite(1.5) == 1.5
    assert br.finite(None) is None


def runs_short(report: br.Report, options: BenchOptions) -> list[tuple[str, bool]]:
    return [(s.run, s.ours) for s in shortfalls(report, options)]


def test_each_variant_that_ran_needs_exactly_n_distinct_outputs() -> None:
    options = BenchOptions(events=N)
    assert shortfalls(FULL, options) == []
    extra = dataclasses.replace(ok_row(br.FAUST, 1_000.0), events=N + 1)
    assert runs_short(report(extra), options) == [("(b) variant b", False)]
    assert runs_short(report(dataclasses.replace(ok_row(br.FAUST, 1_000.0), distinct=N - 1)), options) == [
        ("(b) variant b", False)]
    failed = shortfalls(report(br.Row(br.PIPELINE, "pipeline", status=br.FAILED, note="no progress")), options)
    assert [(s.run, s.why, s.ours) for s in failed] == [("(c) pipeline", "no progress", True)]


def test_only_our_pipelines_shortfalls_fail_the_bench_and_each_line_says_which() -> None:
    baseline = shortfalls(report(br.Row(br.FAUST, "Faust agent", status=br.FAILED, note="no progress for 31s")),
                          BenchOptions(events=N))
    assert [s.ours for s in baseline] == [False]
    assert baseline[0].line() == ("bench: (b) Faust agent incomplete (a baseline: reported, the exit status is not "
                                  "affected): no progress for 31s")
    traced = shortfalls(report(dataclasses.replace(ok_row(br.TRACED, 1_000.0), distinct=N - 1)), BenchOptions(events=N))
    assert traced[0].line().startswith("bench: (d) variant d incomplete (fails the bench): ")


RETRY = br.RetryPathResult(target_rate=1000.0, achieved_rate=999.0, events=N, distinct=N, delay_seconds=1.0, early=0,
                           lateness_p50_ms=3.0, lateness_p99_ms=41.5, lateness_max_ms=60.0)
LATENCY = br.LatencyResult(target_rate=2000.0, achieved_rate=1999.0, events=N, distinct=N, e2e_p50_ms=12.0,
                           e2e_p99_ms=48.5, processing_p50_ms=4.0, processing_p99_ms=9.0)
SOAK = br.SoakResult(seconds=600.0, target_rate=2000.0, achieved_rate=1998.0, events=N, distinct=N, rss_first_mb=90.0,
                     rss_fit_start_mb=120.0, rss_last_mb=121.0, rss_slope_mb_per_hour=1.5, e2e_p50_ms=20.0,
                     e2e_p99_ms=70.0, rss_samples=((0.0, 90.0), (600.0, 121.0)))


def test_each_paced_run_asked_for_needs_each_event_once_and_the_retry_path_nothing_early() -> None:
    paced = dataclasses.replace(FULL, latency=LATENCY, retry_path=RETRY, soak=SOAK)
    options = BenchOptions(events=N, latency=True, soak_seconds=600.0)
    assert shortfalls(paced, options) == []
    # asked for, and missing: they failed
    assert runs_short(FULL, options) == [("latency run", True), ("retry-path run", True), ("soak", True)]
    assert runs_short(dataclasses.replace(paced, retry_path=dataclasses.replace(RETRY, early=1)), options) == [
        ("retry-path run", True)]
    assert runs_short(dataclasses.replace(paced, soak=dataclasses.replace(SOAK, events=N + 1)), options) == [
        ("soak", True)]
    assert runs_short(dataclasses.replace(paced, latency=dataclasses.replace(LATENCY, distinct=N - 1)), options) == [
        ("latency run", True)]


def test_table_and_json_show_the_retry_path_and_the_soak() -> None:
    paced = dataclasses.replace(FULL, retry_path=RETRY, soak=SOAK)
    text = br.render_table(paced)
    assert "retry path (c at 1000/s" in text
    assert "started before due 0; lateness after due (after 0s) p50 3.0 ms, p99 41.5 ms, max 60.0 ms" in text
    assert "soak (c at 2000/s for 600s" in text
    assert "slope after warm-up +1.5 MB/h" in text
    document = orjson.loads(orjson.dumps(paced.as_json()))
    assert document["retry_path"] == dataclasses.asdict(RETRY)
    assert document["soak"]["rss_samples"] == [[0.0, 90.0], [600.0, 121.0]]


def test_paced_targets_say_whether_each_paced_run_met_its_p99() -> None:
    paced = dataclasses.replace(FULL, latency=LATENCY, retry_path=RETRY)
    assert paced.paced_targets() == {
        "e2e p99 < 100 ms": {"p99_ms": 48.5, "maximum_ms": 100.0, "met": True},
        "retry lateness p99 < 1 s": {"p99_ms": 41.5, "maximum_ms": 1000.0, "met": True},
    }
    assert ("paced targets (reported, not enforced): e2e p99 < 100 ms: met (48.5 ms); retry lateness p99 < 1 s: "
            "met (41.5 ms)") in " ".join(br.render_table(paced).split())
    slow = dataclasses.replace(paced, latency=dataclasses.replace(LATENCY, e2e_p99_ms=100.0),
                               retry_path=dataclasses.replace(RETRY, lateness_p99_ms=None))
    assert slow.paced_targets()["e2e p99 < 100 ms"]["met"] is False  # under, not at
    assert "e2e p99 < 100 ms: NOT met (100.0 ms); retry lateness p99 < 1 s: not measured" in br.render_table(slow)
    assert orjson.loads(orjson.dumps(slow.as_json()))["paced_targets"]["retry lateness p99 < 1 s"]["met"] is None


def test_without_paced_runs_there_are_no_paced_targets() -> None:
    assert FULL.paced_targets() == {}
    assert "paced targets" not in br.render_table(FULL)
    assert orjson.loads(orjson.dumps(FULL.as_json()))["paced_targets"] == {}


def test_least_squares_slope() -> None:
    from processor.observability.forecast import least_squares_slope

    assert least_squares_slope([(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]) == pytest.approx(2.0)
    assert least_squares_slope([(0.0, 5.0), (10.0, 5.0), (20.0, 5.0)]) == pytest.approx(0.0)
    assert least_squares_slope([(0.0, 1.0), (1.0, 2.0), (2.0, 1.0), (3.0, 2.0)]) == pytest.approx(0.2)
    assert least_squares_slope([(1.0, 1.0)]) is None
    assert least_squares_slope([(1.0, 1.0), (1.0, 2.0)]) is None


# -- /proc and files ---------------------------------------------------------------------------------------


def test_cpu_ticks_are_utime_plus_stime_even_with_a_strange_command_name() -> None:
    stat = "4242 (python3 (a) b) S 1 4242 4242 0 -1 4194560 900 0 0 0 150 37 0 0 20 0 3 0 100 1000 200"
    assert parse_cpu_ticks(stat) == 187


def test_cpu_ticks_of_this_process_grow() -> None:
    from processor.bench.proc import cpu_ticks, peak_rss_kb

    assert cpu_ticks() >= 0
    assert peak_rss_kb() > 1000


def test_schedstat_and_machine_cpu_lines_are_parsed() -> None:
    assert parse_schedstat("123456789 987654 42\n") == (123456789, 987654)
    # user nice system idle iowait irq softirq steal guest guest_nice: guest is in user already
    stat = "cpu  100 5 20 800 50 1 4 0 30 0\ncpu0 50 2 10 400 25 0 2 0 15 0\n"
    assert parse_machine_cpu(stat) == (130, 980)


def test_cpu_contention_is_the_busy_share_and_the_wait_and_run_shares_between_snapshots() -> None:
    before = CpuSnapshot(wall_ns=0, machine=(100, 1000), main_thread_wait_ns=5_000_000, main_thread_run_ns=10_000_000)
    after = CpuSnapshot(wall_ns=1_000_000_000, machine=(250, 1200), main_thread_wait_ns=255_000_000,
                        main_thread_run_ns=710_000_000)
    assert cpu_contention(before, after) == CpuContention(pytest.approx(0.75), pytest.approx(0.25),
                                                          pytest.approx(0.7))
    unknown = CpuSnapshot(wall_ns=1_000_000_000, machine=None, main_thread_wait_ns=None, main_thread_run_ns=None)
    assert cpu_contention(before, unknown) == CpuContention(None, None, None)


def test_cpu_snapshots_of_this_process_see_it_spin() -> None:
    # Linux keeps both counts here (as on every machine the suite runs on); this process spinning makes the
    # machine busier than nothing, and the counts never run backwards.
    before = cpu_snapshot(os.getpid())
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        pass
    contention = cpu_contention(before, cpu_snapshot(os.getpid()))
    assert contention.busy is not None
    assert 0 < contention.busy <= 1
    assert contention.waited is not None
    assert 0 <= contention.waited <= 1
    # The main thread spun for the whole span, bar what the scheduler gave others (1.01: read apart from the clock).
    assert contention.ran is not None
    assert 0.1 < contention.ran <= 1.01


def test_cpu_share_between_two_times_comes_from_the_samples_inside() -> None:
    hz = CLOCK_TICKS_PER_SECOND
    samples = [(10.0, 0), (11.0, hz // 2), (12.0, hz), (13.0, 3 * hz)]
    assert cpu_share_between(samples, 10.0, 12.0) == pytest.approx(0.5)
    assert cpu_share_between(samples, 11.5, 13.0) == pytest.approx(2.0)  # two cores' worth
    assert cpu_share_between(samples, 10.5, 11.9) is None  # one sample inside: no span to divide by
    assert cpu_share_between([], 0.0, 1.0) is None


def test_cpu_sampler_reads_at_most_every_so_often_and_sees_this_process_spin() -> None:
    sampler = CpuSampler(os.getpid(), every_seconds=0.05)
    started = time.time()
    while time.time() < started + 0.4:
        sampler.sample()
    # Called thousands of times, read about every 50 ms.
    assert 2 <= len(sampler.samples) <= 10
    share = cpu_share_between(sampler.samples, started, time.time())
    assert share is not None
    assert share > 0


def test_cpu_sampler_of_a_process_that_is_gone_keeps_what_it_had() -> None:
    sampler = CpuSampler(2**22 + 7)  # above the kernel's largest pid: no such process
    sampler.sample()
    assert sampler.samples == []


def test_a_run_is_cut_in_thirds_by_input_time() -> None:
    assert split_in_thirds(0.0, 9.0) == ((0.0, 3.0), (3.0, 6.0), (6.0, 9.0))
    assert [third_of(t, 0.0, 9.0) for t in (0.0, 2.99, 3.0, 6.0, 9.0)] == [0, 0, 1, 2, 2]
    assert third_of(5.0, 5.0, 5.0) == 0  # a run of one instant


def test_status_lines_are_read_by_name() -> None:
    status = "Name:\tpython\nVmPeak:\t  500000 kB\nVmHWM:\t   81234 kB\nVmRSS:\t   80000 kB\n"
    assert parse_status_kb(status, "VmHWM") == 81234
    assert parse_status_kb(status, "VmRSS") == 80000
    with pytest.raises(ValueError, match="VmHWM"):
        parse_status_kb("Name:\tpython\n", "VmHWM")


def test_json_files_round_trip_and_absent_is_none(tmp_path: Path) -> None:
    path = tmp_path / "mark"
    assert read_json(path) is None
    write_json(path, {"wall": 1.5, "cpu_ticks": 7})
    assert read_json(path) == {"wall": 1.5, "cpu_ticks": 7}
    assert not list(tmp_path.glob("*.partial"))


def test_loop_spec_round_trips_through_json() -> None:
    spec = LoopSpec(source="s", output="o", group="g", events=5, mark_file="m", result_file="r", state_dir="d")
    assert LoopSpec.from_json(spec.to_json()) == spec


# -- events, schema and topology ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [200, 64, 1000])
def test_events_have_the_payload_size_and_pass_the_bench_schema(size: int) -> None:
    value = event_value("bench-x", 12345, size)
    assert len(value) == size
    schemas = Path(processor.__file__).parent / "bench" / "schemas"
    decoder = Decoder(compile_schema(schemas, "bench_event"), "event_id", 1 << 20)
    event, event_id = decoder.decode(value, {})
    assert event_id == "bench-x-12345"
    assert event["n"] == 12345


def test_a_tiny_payload_size_gives_the_smallest_event() -> None:
    assert orjson.loads(event_value("r", 1, 1))["payload"] == ""


def test_bench_topology_passes_the_event_through_and_marks_its_first_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mark = tmp_path / "mark"
    monkeypatch.setenv("PROCESSOR_BENCH_NAME", "bench-unit")
    monkeypatch.setenv("PROCESSOR_BENCH_SOURCE", "bench-unit.src")
    monkeypatch.setenv("PROCESSOR_BENCH_OUTPUT", "bench-unit.dst")
    monkeypatch.setenv("PROCESSOR_BENCH_MARK_FILE", str(mark))
    import processor.bench.topology as module

    module = importlib.reload(module)
    (spec,) = module.topology.handlers
    assert (spec.source, spec.outputs, spec.schema) == ("bench-unit.src", ("bench-unit.dst",), "bench_event")
    assert module.topology.group(spec.name) == "bench-unit.passthrough"
    ctx = Context(topology="bench-unit", handler=spec.name, event_id="e1", topic="bench-unit.src", partition=0,
                  offset=0, attempt=1, key=b"1", headers={}, dependencies={})
    event = {"event_id": "e1", "n": 1, "payload": ""}
    assert asyncio.run(spec.func(event, ctx)) == [Output("bench-unit.dst", event)]
    first = read_json(mark)
    assert first is not None
    assert set(first) == {"wall", "cpu_ticks"}
    asyncio.run(spec.func(event, ctx))
    assert read_json(mark) == first


# -- options and servers -----------------------------------------------------------------------------------


def test_defaults_match_the_issue() -> None:
    options = BenchOptions()
    assert (options.events, options.partitions, options.payload_bytes) == (20_000, 3, 200)
    assert options.json_path is None


def test_the_embedded_stack_stands_in_for_unset_servers() -> None:
    assert missing_servers({}) == ["KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"]
    assert missing_servers({"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "REDIS_URL": ""}) == ["REDIS_URL"]
    assert missing_servers({"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "REDIS_URL": "redis://r:6379/0"}) == []


EMBEDDED = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "REDIS_URL": "redis://127.0.0.1:2/0"}


def _stack(broker: BrokerKind, nodes: int = 1) -> DevStack:
    def server(name: str, port: int) -> ServerProcess:
        return ServerProcess(name=name, pid=1, port=port, binary="x", log="x.log")

    return DevStack(broker, tuple(server(f"kafka-{i}", 9000 + i) for i in range(nodes)), server("redis", 6379))


def test_on_its_own_tansu_the_bench_shortens_the_paced_runs_fetch_wait_unless_one_is_set() -> None:
    assert paced_fetch_wait({}, _stack("tansu")) == EMBEDDED_FETCH_MAX_WAIT_MS
    assert paced_fetch_wait({"KAFKA_FETCH_MAX_WAIT_MS": "50"}, _stack("tansu")) is None
    assert paced_fetch_wait({}, _stack("kafka")) is None  # real Kafka answers a fetch when records arrive
    assert paced_fetch_wait({}, None) is None  # a broker of the user's: the worker's own setting
    settings = Settings.load({}, overrides=EMBEDDED)
    run = Run(settings=settings, run_id="r", source="s", events=1, partitions=1, input_timestamps=[0],
              timeout_seconds=1.0)
    assert run.paced_fetch_wait == settings.kafka_fetch_max_wait_ms == 100
    assert dataclasses.replace(run, paced_fetch_wait_ms=20).paced_fetch_wait == 20


def test_variant_processes_get_the_runs_servers_and_fetch_wait() -> None:
    settings = Settings.load({}, overrides={**EMBEDDED, "KAFKA_FETCH_MAX_WAIT_MS": "20"})
    env = child_env(settings, {"EXTRA": "1"})
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:1"
    assert env["REDIS_URL"] == "redis://127.0.0.1:2/0"
    assert env["KAFKA_FETCH_MAX_WAIT_MS"] == "20"
    assert env["OTEL_TRACES_EXPORTER"] == "none"
    assert env["EXTRA"] == "1"


def test_the_backend_description_never_shows_the_redis_url() -> None:
    settings = Settings.load({}, overrides={"KAFKA_BOOTSTRAP_SERVERS": "k:9092",
                                            "REDIS_URL": "redis://:hunter2@r:6379/0"})
    assert describe_backend(settings, []) == "Kafka k:9092, Redis from REDIS_URL"
    assert "hunter2" not in describe_backend(settings, ["KAFKA_BOOTSTRAP_SERVERS"])
    assert describe_backend(settings, ["KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"]) == (
        "embedded Tansu, embedded redis-server")
    own = ["KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"]
    assert describe_backend(settings, own, _stack("kafka")) == (
        f"own apache kafka {KAFKA_VERSION} (KRaft, 1 broker), embedded redis-server")


def test_both_brokers_run_kafka_then_tansu_and_a_bad_choice_says_what_to_pick() -> None:
    assert brokers_to_run(BenchOptions(broker="both")) == ("kafka", "tansu")
    assert brokers_to_run(BenchOptions()) == ("kafka",)
    with pytest.raises(ConfigError, match="choose kafka, tansu or both"):
        brokers_to_run(BenchOptions(broker="zookeeper"))
