"""`processor bench --soak SECONDS`: the pipeline (c) at a fixed rate for a long time, its RSS sampled.

A leak shows as resident memory that keeps growing while the load stays the same. The first part of the
run is left out of the fit (``WARM_UP``): caches, buffers and the rolling latency windows fill up then by
design. The rest is fitted with a least-squares line, whose slope the report gives in MB per hour, next to
how much the RSS grew over that part. Every event must also come out exactly once.

No second reader of the inputs here (nor in the latency run, which measures the broker alone in a run of its
own): on the embedded broker, which keeps every record in memory and slows down as topics grow, the soaks
with one did not finish.
"""

from __future__ import annotations

import time
from pathlib import Path

from processor.bench.latency import paced_worker, produce_paced
from processor.bench.proc import rss_kb
from processor.bench.report import PIPELINE, SoakResult, percentile
from processor.bench.run import Run
from processor.observability.forecast import least_squares_slope

SAMPLE_SECONDS = 5.0
WARM_UP = 0.2  # of the run, left out of the slope
KEEP_EVERY = 100  # e2e from every 100th output: plenty for a p99, little memory over millions of events


def run_soak(run: Run, log_dir: Path, *, seconds: float, rate: float, payload_bytes: int) -> SoakResult:
    """Produce at ``rate`` for ``seconds`` to a fresh worker, sampling its RSS every ``SAMPLE_SECONDS``."""
    events = max(1, int(rate * seconds))
    with paced_worker(run, log_dir, f"{PIPELINE}-soak", "processor pipeline soak", keep_every=KEEP_EVERY) as worker:
        samples: list[tuple[float, float]] = []  # (seconds since the load began, RSS MB)
        started = time.monotonic()
        next_sample = started

        def between(timeout_seconds: float) -> None:
            nonlocal next_sample
            worker.reader.poll(timeout_seconds)
            now = time.monotonic()
            if now >= next_sample:
                samples.append((now - started, rss_kb(worker.proc.pid) / 1024))
                next_sample += SAMPLE_SECONDS

        inputs, achieved = produce_paced(run, worker.source, events, rate, payload_bytes, between)
        worker.wait_outputs(events, run.timeout_seconds)
        samples.append((time.monotonic() - started, rss_kb(worker.proc.pid) / 1024))
        fitted = [(t, mb) for t, mb in samples if t >= WARM_UP * seconds]
        slope = least_squares_slope(fitted)
        e2e = [ts - inputs[n] for n, ts in worker.reader.records if 0 <= n < events]
        return SoakResult(
            seconds=seconds, target_rate=rate, achieved_rate=achieved, events=worker.reader.count,
            distinct=len(worker.reader.numbers), rss_first_mb=samples[0][1],
            rss_fit_start_mb=fitted[0][1] if fitted else None, rss_last_mb=samples[-1][1],
            rss_slope_mb_per_hour=None if slope is None else slope * 3600,
            e2e_p50_ms=percentile(e2e, 0.5), e2e_p99_ms=percentile(e2e, 0.99),
            rss_samples=tuple((round(t, 1), round(mb, 2)) for t, mb in samples),
        )
