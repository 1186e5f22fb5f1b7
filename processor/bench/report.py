"""`processor bench` results: the pure part. Percentiles, ratios, the terminal table and the JSON shape.

Nothing here touches Kafka, Redis or processes, so all of it is unit-tested directly.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# Row keys, in the order the bench runs and prints them.
PLAIN = "a"
FAUST_CONSUME = "b0"
FAUST = "b"
PIPELINE = "c"
TRACED = "d"
QUIX = "e"
ORDER = (PLAIN, FAUST_CONSUME, FAUST, PIPELINE, TRACED, QUIX)

OK = "ok"
SKIPPED = "skipped"
FAILED = "failed"

# The targets of the issue: reported, never asserted. (numerator, denominator, minimum ratio)
TARGETS: tuple[tuple[str, str, float], ...] = ((PIPELINE, FAUST, 3.0), (PIPELINE, FAUST_CONSUME, 0.8))
# The paced runs' targets of the issue, reported and never asserted like those above (an event started
# before its due time fails the run instead: bench.complete): (name, maximum p99 in ms).
LATENCY_TARGET = ("e2e p99 < 100 ms", 100.0)
RETRY_PATH_TARGET = ("retry lateness p99 < 1 s", 1000.0)
# The processes whose CPU the latency run samples, by their key in ``LatencyResult.cpu_by_third``: together
# they are nearly all of what runs on the machine's cores meanwhile, so a third whose e2e p99 rose says
# which of them took the CPU.
CPU_PROCESSES = {"worker": "the worker", "broker": "the broker", "redis": "Redis",
                 "load": "the bench's own load (producer and reader)"}
# The ratios the report shows: c against every baseline.
RATIOS: tuple[tuple[str, str], ...] = (
    (PIPELINE, PLAIN), (PIPELINE, FAUST), (PIPELINE, FAUST_CONSUME), (PIPELINE, QUIX),
)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-quantile (0..1) by linear interpolation between closest ranks (numpy's default);
    None for no values."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} is not in [0, 1]")
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing or the denominator is not positive."""
    if numerator is None or denominator is None or denominator <= 0 or math.isnan(denominator):
        return None
    if math.isnan(numerator):
        return None
    return numerator / denominator


def finite(value: float | None) -> float | None:
    """None for NaN (an empty histogram's quantile), so the JSON holds null rather than NaN."""
    return None if value is None or math.isnan(value) else value


@dataclass(frozen=True)
class LoopSpeed:
    """The CPU's speed over a run: the CPU time of the speed probe's fixed loop (processor.bench.proc), p10,
    p50 and p90 of the times it ran then; larger is a slower machine, the same work every time."""

    p10_ms: float
    p50_ms: float
    p90_ms: float
    samples: int


def loop_speed(samples: Sequence[tuple[float, float]], start_ms: float, end_ms: float) -> LoopSpeed | None:
    """The probe's ``(wall ms, loop ms)`` samples from ``start_ms`` to ``end_ms``; None for none there. A run
    shorter than the probe's half second gets the sample nearest to it, so that no row is left without."""
    inside = [ms for at, ms in samples if start_ms <= at <= end_ms]
    if not inside and samples:
        middle = (start_ms + end_ms) / 2
        inside = [min(samples, key=lambda s: abs(s[0] - middle))[1]]
    if not inside:
        return None
    return LoopSpeed(_quantile(inside, 0.1), _quantile(inside, 0.5), _quantile(inside, 0.9), len(inside))


def _quantile(values: Sequence[float], q: float) -> float:
    value = percentile(values, q)
    assert value is not None  # values is not empty
    return value


@dataclass(frozen=True)
class Row:
    """One variant's measurements; times in milliseconds, None where not measured.

    ``events`` counts the records the variant produced to its output topic (consumed, for b0) and
    ``distinct`` the distinct input keys among them: both equal the run's event count when it processed
    each event exactly once.
    """

    key: str
    label: str
    status: str = OK
    note: str = ""
    events: int = 0
    distinct: int = 0
    seconds: float | None = None
    events_per_s: float | None = None
    processing_p50_ms: float | None = None
    processing_p99_ms: float | None = None
    processing_source: str = ""
    e2e_p50_ms: float | None = None
    e2e_p99_ms: float | None = None
    e2e_raw_p50_ms: float | None = None
    e2e_raw_p99_ms: float | None = None
    peak_rss_mb: float | None = None
    cpu_seconds_per_1k: float | None = None
    cpu_seconds_total: float | None = None
    spans_exported: int | None = None  # (d): spans its collector received
    cpu_speed: LoopSpeed | None = None  # from its first record to its last


@dataclass(frozen=True)
class LatencyResult:
    """``--latency``: the pipeline fed at a fixed rate below its maximum; e2e is then a real latency."""

    target_rate: float
    achieved_rate: float
    events: int
    distinct: int
    e2e_p50_ms: float | None
    e2e_p99_ms: float | None
    processing_p50_ms: float | None
    processing_p99_ms: float | None
    seconds: float = 0.0  # how long the load ran
    warm_up_seconds: float = 0.0  # events of the first seconds are left out of the percentiles
    # The same load read by a plain confluent-kafka consumer, no worker: one trip through the broker.
    broker_p50_ms: float | None = None
    broker_p99_ms: float | None = None
    # While the load ran: the share of the machine's CPU time that was busy (everything on it), and of the
    # wall time the worker's main thread was ready to run but waited for a CPU, and ran on one (the pipeline
    # runs on that thread: near 1, the worker had no time to spare). None where Linux does not say.
    machine_busy_share: float | None = None
    worker_main_thread_wait_share: float | None = None
    worker_main_thread_run_share: float | None = None
    # How late the worker's event loop ran its timers meanwhile (processor.observability.loop_lag): the
    # worker's own stalls.
    loop_lag_p50_ms: float | None = None
    loop_lag_p99_ms: float | None = None
    # The part after warm-up cut in three by input time: e2e p99 in each, and the CPU (share of one core) of
    # each process on the machine's cores meanwhile, by name (CPU_PROCESSES); () and {} where not measured,
    # None in a third the bench cannot tell (no events, or a server that is not the bench's own). Tansu lists
    # every batch a partition holds on each fetch, so its CPU grows through a run at a fixed rate; on real
    # Kafka it does not.
    e2e_p99_by_third_ms: tuple[float | None, ...] = ()
    cpu_by_third: Mapping[str, tuple[float | None, ...]] = field(default_factory=dict)
    cpu_speed: LoopSpeed | None = None  # while the load ran, after warm-up


@dataclass(frozen=True)
class RetryPathResult:
    """``--latency``, retry path: every first attempt fails; when did the second start against its due time."""

    target_rate: float
    achieved_rate: float
    events: int
    distinct: int
    delay_seconds: float
    early: int  # events whose retry started before its due time: must be 0
    lateness_p50_ms: float | None
    lateness_p99_ms: float | None
    lateness_max_ms: float | None
    seconds: float = 0.0
    warm_up_seconds: float = 0.0


@dataclass(frozen=True)
class SoakResult:
    """``--soak``: a long run at a fixed rate with the worker's RSS sampled (MB), and its fitted slope."""

    seconds: float
    target_rate: float
    achieved_rate: float
    events: int
    distinct: int
    rss_first_mb: float
    rss_fit_start_mb: float | None
    rss_last_mb: float
    rss_slope_mb_per_hour: float | None
    e2e_p50_ms: float | None
    e2e_p99_ms: float | None
    rss_samples: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class Report:
    """A whole bench run."""

    events: int
    partitions: int
    payload_bytes: int
    backend: str
    run_id: str
    rows: tuple[Row, ...]
    latency: LatencyResult | None = None
    retry_path: RetryPathResult | None = None
    soak: SoakResult | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def row(self, key: str) -> Row | None:
        return next((r for r in self.rows if r.key == key), None)

    def rate(self, key: str) -> float | None:
        row = self.row(key)
        return row.events_per_s if row is not None and row.status == OK else None

    def ratios(self) -> dict[str, float | None]:
        """events/s of c over each baseline, keyed ``"c/a"`` etc.; None where a side did not run."""
        return {f"{n}/{d}": ratio(self.rate(n), self.rate(d)) for n, d in RATIOS}

    def targets(self) -> dict[str, dict[str, float | bool | None]]:
        """Each target of the issue: the ratio measured, the minimum, and whether it was met."""
        out: dict[str, dict[str, float | bool | None]] = {}
        for numerator, denominator, minimum in TARGETS:
            measured = ratio(self.rate(numerator), self.rate(denominator))
            out[f"{numerator} >= {minimum:g}x {denominator}"] = {
                "ratio": measured, "minimum": minimum, "met": None if measured is None else measured >= minimum,
            }
        return out

    def paced_targets(self) -> dict[str, dict[str, float | bool | None]]:
        """Each paced run's target, for the runs that ran: the p99 measured, the maximum, and whether it was
        under it (None: not measured)."""
        measured = []
        if self.latency is not None:
            measured.append((LATENCY_TARGET, self.latency.e2e_p99_ms))
        if self.retry_path is not None:
            measured.append((RETRY_PATH_TARGET, self.retry_path.lateness_p99_ms))
        return {
            name: {"p99_ms": p99, "maximum_ms": maximum, "met": None if p99 is None else p99 < maximum}
            for (name, maximum), p99 in measured
        }

    def as_json(self) -> dict[str, Any]:
        """The ``--json`` document: options, every row, ratios, targets, latency mode and notes."""
        return {
            "run_id": self.run_id,
            "options": {"events": self.events, "partitions": self.partitions, "payload_bytes": self.payload_bytes},
            "backend": self.backend,
            "rows": [asdict(r) for r in self.rows],
            "ratios": self.ratios(),
            "targets": self.targets(),
            "paced_targets": self.paced_targets(),
            "latency": asdict(self.latency) if self.latency is not None else None,
            "retry_path": asdict(self.retry_path) if self.retry_path is not None else None,
            "soak": asdict(self.soak) if self.soak is not None else None,
            "notes": list(self.notes),
        }


def _cell(value: float | None, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


_HEADER = (f"{'variant':<38}{'events/s':>9}{'proc p50':>10}{'proc p99':>10}{'e2e p50':>10}{'e2e p99':>10}"
           f"{'RSS MB':>8}{'CPU s/1k':>9}{'events':>8}{'loop':>7}")


def render_table(report: Report) -> str:
    """The terminal table: one line per variant, then ratios, targets, latency mode and notes."""
    lines = [
        f"processor bench {report.run_id}: {report.events} events x {report.payload_bytes} B, "
        f"{report.partitions} partitions, {report.backend}",
        _HEADER,
        f"{'':<38}{'':>9}{'ms':>10}{'ms':>10}{'ms':>10}{'ms':>10}{'':>8}{'':>9}{'':>8}{'ms':>7}",
        "-" * len(_HEADER),
    ]
    for row in report.rows:
        name = f"({row.key}) {row.label}"[:37]
        if row.status != OK:
            lines.append(f"{name:<38}{row.status.upper()}: {row.note}")
            continue
        lines.append(
            f"{name:<38}{_cell(row.events_per_s, 9, 0)}{_cell(row.processing_p50_ms, 10, 3)}"
            f"{_cell(row.processing_p99_ms, 10, 3)}{_cell(row.e2e_p50_ms, 10, 1)}{_cell(row.e2e_p99_ms, 10, 1)}"
            f"{_cell(row.peak_rss_mb, 8, 1)}{_cell(row.cpu_seconds_per_1k, 9, 3)}{row.events:>8}"
            f"{_cell(row.cpu_speed.p50_ms if row.cpu_speed else None, 7, 1)}"
        )
    lines.append("")
    lines.append("ratios (events/s): " + "  ".join(
        f"{name} {'-' if value is None else f'{value:.2f}'}" for name, value in report.ratios().items()))
    lines.append("targets (reported, not enforced): " + "; ".join(
        f"{name}: {_verdict(t, 'ratio', lambda r: f'{r:.2f}x')}" for name, t in report.targets().items()))
    if report.latency is not None:
        lat = report.latency
        lines.append(
            f"latency mode (c at {lat.target_rate:.0f}/s for {lat.seconds:g}s, achieved {lat.achieved_rate:.0f}/s, "
            f"{lat.events} events; percentiles after {lat.warm_up_seconds:g}s): "
            f"e2e p50 {_ms(lat.e2e_p50_ms)}, p99 {_ms(lat.e2e_p99_ms)}; "
            f"processing p50 {_ms(lat.processing_p50_ms)}, p99 {_ms(lat.processing_p99_ms)}; "
            f"the broker alone (the same load read by a plain consumer, in a run of its own) "
            f"p50 {_ms(lat.broker_p50_ms)}, "
            f"p99 {_ms(lat.broker_p99_ms)}; meanwhile the machine's CPUs were {_share(lat.machine_busy_share)} busy "
            f"and the worker's main thread ran {_share(lat.worker_main_thread_run_share)} of the time and waited for a "
            f"CPU {_share(lat.worker_main_thread_wait_share)}, "
            f"its event loop ran timers late by p50 {_ms(lat.loop_lag_p50_ms)}, p99 {_ms(lat.loop_lag_p99_ms)}"
            + (f"; by third of the run after warm-up: e2e p99 {_series(lat.e2e_p99_by_third_ms, _ms)}"
               if lat.e2e_p99_by_third_ms else "")
            + (", CPU (share of a core) of " + ", ".join(
                f"{CPU_PROCESSES.get(name, name)} {_series(shares, _share)}"
                for name, shares in lat.cpu_by_third.items()) if lat.cpu_by_third else "")
            + (f"; the speed probe's loop took p10 {_ms(lat.cpu_speed.p10_ms)}, p50 {_ms(lat.cpu_speed.p50_ms)}, "
               f"p90 {_ms(lat.cpu_speed.p90_ms)}{_against_maximum(report)}" if lat.cpu_speed else "")
        )
    if report.retry_path is not None:
        retry = report.retry_path
        lines.append(
            f"retry path (c at {retry.target_rate:.0f}/s for {retry.seconds:g}s, every first attempt fails, tier "
            f"delay {retry.delay_seconds:g}s, {retry.events} events): started before due {retry.early}; lateness "
            f"after due (after {retry.warm_up_seconds:g}s) p50 {_ms(retry.lateness_p50_ms)}, "
            f"p99 {_ms(retry.lateness_p99_ms)}, max {_ms(retry.lateness_max_ms)}"
        )
    if report.soak is not None:
        soak = report.soak
        slope = "-" if soak.rss_slope_mb_per_hour is None else f"{soak.rss_slope_mb_per_hour:+.1f} MB/h"
        lines.append(
            f"soak (c at {soak.target_rate:.0f}/s for {soak.seconds:.0f}s, achieved {soak.achieved_rate:.0f}/s, "
            f"{soak.events} outputs of {soak.distinct} distinct events): RSS {soak.rss_first_mb:.1f} MB at start, "
            f"{_mb(soak.rss_fit_start_mb)} after warm-up, {soak.rss_last_mb:.1f} MB at the end; slope after "
            f"warm-up {slope}; e2e p50 {_ms(soak.e2e_p50_ms)}, p99 {_ms(soak.e2e_p99_ms)}"
        )
    paced = report.paced_targets()
    if paced:
        lines.append("paced targets (reported, not enforced): " + "; ".join(
            f"{name}: {_verdict(t, 'p99_ms', _ms)}" for name, t in paced.items()))
    notes = [f"({row.key}) {row.note}" for row in report.rows if row.status == OK and row.note]
    for note in (*notes, *report.notes):
        lines.extend(textwrap.wrap(note, width=len(_HEADER), subsequent_indent="  "))
    return "\n".join(lines)


def _against_maximum(report: Report) -> str:
    # The paced rate is half of (c)'s maximum: how fast the CPU was when that was measured tells whether
    # the half was a half of the machine the paced run met.
    pipeline = next((r for r in report.rows if r.key == PIPELINE and r.cpu_speed is not None), None)
    if pipeline is None or pipeline.cpu_speed is None:
        return ""
    return f" (p50 {_ms(pipeline.cpu_speed.p50_ms)} in (c)'s throughput run)"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _series(values: Sequence[float | None], show: Callable[[float | None], str]) -> str:
    return ", ".join(show(v) for v in values)


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} MB"


def _verdict(target: Mapping[str, float | bool | None], measured: str, show: Callable[[float], str]) -> str:
    """A target's verdict, with its ``measured`` value as ``show`` writes it."""
    value = target[measured]
    if value is None:
        return "not measured"
    return f"{'met' if target['met'] else 'NOT met'} ({show(float(value))})"
