"""Chaos experiments: recorded scrapes as promtool input series, one sample a second, in promtool's
expanding notation; how history, stale markers, the aftermath and timestamps are written is explained in
``processor.chaos.alerts``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from processor.chaos.record import Series

COUNTER_SUFFIXES = ("_total", "_count", "_bucket")
BUCKET_SUFFIX = "_bucket"
LAG_FORECAST = "processor_lag_forecast_seconds"
GOOD_OUTCOME = "success"  # of processor_events_total's ``outcome``: the only one the history has


def _fmt(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return "NaN" if math.isnan(value) else ("Inf" if value > 0 else "-Inf")
    # Every digit (repr's shortest round trip): a value rounded below a ramp's end reads as a reset.
    return str(int(value)) if value == int(value) else repr(value)


def expand(values: Sequence[float | str | None]) -> str:
    """promtool's expanding notation for one sample per step: None is missing (``_``), "stale" a stale
    marker, and runs with a constant step (equal values, or a counter's steady ramp) are written ``a+bxn``."""
    out: list[str] = []
    i = 0
    while i < len(values):
        v = values[i]
        if v is None or isinstance(v, str):
            j = i
            while j < len(values) and values[j] == v:
                j += 1
            token = "_" if v is None else v
            out.append(f"{token}x{j - i}" if j - i > 1 and v is None else " ".join([token] * (j - i)))
            i = j
            continue
        if not math.isfinite(v):  # Inf - Inf is no step: each one is written out (a forecast of "never")
            out.append(_fmt(v))
            i += 1
            continue
        j = i + 1
        step = None
        while j < len(values):
            w = values[j]
            if w is None or isinstance(w, str) or not math.isfinite(w):
                break
            d = w - values[j - 1]  # type: ignore[operator]
            if step is None:
                step = d
            elif abs(d - step) > 1e-9 * max(1.0, abs(w)):
                break
            j += 1
        # The ramp as promtool computes it must not end above the value after it (or that reads as a
        # reset): else its last value goes out as it is.
        while j - i > 1 and j < len(values) and isinstance(values[j], float | int) and (
                _ramp_end(v, step or 0, j - i - 1) > values[j]):  # type: ignore[operator]
            j -= 1
        if j - i == 1:
            out.append(_fmt(v))
        else:
            sign = "+" if (step or 0) >= 0 else "-"
            out.append(f"{_fmt(v)}{sign}{_fmt(abs(step or 0))}x{j - i - 1}")
        i = j
    return " ".join(out)


def _ramp_end(start: float, step: float, count: int) -> float:
    # Where promtool's ``start+stepxcount`` ends, from the printed numbers, adding up or multiplying
    # (the larger): a ramp ending above the value after it is a counter reset to rate(), whose increase
    # (the whole counter) swamped every window across it and hid a latency page.
    first, delta = float(_fmt(start)), float(_fmt(step))
    summed = first
    for _ in range(count):
        summed += delta
    return max(summed, first + delta * count)


def _labels(name: str, labels: Iterable[tuple[str, str]], instance: str) -> str:
    pairs = [*labels, ("instance", instance), ("job", "processor")]
    body = ",".join(f'{k}="{v}"' for k, v in sorted(pairs) if k != "__name__")
    return f"{name}{{{body}}}"


@dataclass(frozen=True)
class Clock:
    """How the recording maps onto promtool's steps, one a second: step ``history`` is ``t0`` (the first
    scrape); ``steady`` is the load before the fault (start, end), whose counter rates the history gets."""

    t0: float
    end: float
    history: int
    aftermath: int
    steady: tuple[float, float] | None = None

    @property
    def steps(self) -> int:
        return self.history + round(self.end - self.t0) + 1 + self.aftermath

    def step(self, at: float) -> int:
        return self.history + round(at - self.t0)


Key = tuple[tuple[str, str], ...]
STEADY_MIN_SECONDS = 2.0  # the shortest fault-free load a history rate is taken from


def _value_at(series: Series, name: str, key: Key, when: float) -> float:
    found = 0.0
    for sample in series.samples:
        if sample.at > when:
            break
        found = sample.scrape.samples.get(name, {}).get(key, found)
    return found


def _steady_rate(series: Series, name: str, key: Key, clock: Clock) -> float:
    """A counter's rate in the steady load before the fault (0 without one of at least 2 s)."""
    if clock.steady is None or clock.steady[1] - clock.steady[0] < STEADY_MIN_SECONDS:
        return 0.0
    start, end = clock.steady
    return max(0.0, (_value_at(series, name, key, end) - _value_at(series, name, key, start)) / (end - start))


def _history_rate(series: Series, name: str, key: Key, clock: Clock) -> float:
    """A counter's rate in the history: the steady load's traffic, every event of it good. The steady load
    is the run's first seconds, whose first batches are often slow (cold connections, topic metadata): at
    their own rates the buckets made the whole invented history burn the latency budget and page before
    the recording began. So a bucket grows with its histogram's count (every event under every bound) and
    an outcome counter only for success; the recording itself keeps every slow or failed event it had."""
    if dict(key).get("outcome", GOOD_OUTCOME) != GOOD_OUTCOME:
        return 0.0
    if name.endswith(BUCKET_SUFFIX):
        name, key = name.removesuffix(BUCKET_SUFFIX) + "_count", tuple(p for p in key if p[0] != "le")
    return _steady_rate(series, name, key, clock)


def _values(series: Series, by_step: dict[int, dict[str, dict[Key, float]]], name: str, key: Key,
            clock: Clock) -> list[float | str | None]:
    """One series of one process, a value per step (see the module docstring)."""
    first_step, last_step = min(by_step), max(by_step)
    # History only for what was there from the start: a process scraped at once, a series in its first scrape
    # (a series that appears later, such as a partition's lag measured later, starts where it appears).
    from_start = first_step <= clock.history + 2 and key in by_step[first_step][name]
    rebase = name.endswith("_timestamp_seconds")  # onto promtool's clock, which starts at 0
    counter = name.endswith(COUNTER_SUFFIXES)
    shift = clock.t0 - clock.history if rebase else 0.0
    rate = _history_rate(series, name, key, clock) if counter and from_start else 0.0
    offset = rate * clock.history  # the history's traffic is added to every later value of a counter
    values: list[float | str | None] = [None] * clock.steps
    last: float | None = None
    seen = False
    for step in range(first_step, last_step + 1):
        snap = by_step.get(step)
        if snap is None:
            continue
        raw = snap[name].get(key)
        if raw is not None and not (rebase and raw <= 0):  # a timestamp gauge reads 0 until first set
            last = raw - shift + offset
            if not seen and from_start:
                for s in range(step):
                    values[s] = last - (step - s) if rebase else min(rate * s, last) if counter else last
            values[step] = last
            seen = True
        elif last is not None:
            values[step] = "stale"  # gone from the scrape: Prometheus marks it stale
            last = None
    if last is not None and series.ended_at is None:
        # A lag forecast is a trend, not a level: held, its last value would forecast the same crossing for
        # the whole aftermath. The run ends with the lag back at 0 (checked), and caught up is "never".
        if name == LAG_FORECAST and dict(key).get("until") == "threshold":
            last = math.inf
        for k, step in enumerate(range(last_step + 1, clock.steps), start=1):
            values[step] = last + k if rebase else last
    elif last is not None and last_step + 1 < clock.steps:
        values[last_step + 1] = "stale"  # the process stopped: its next scrape fails
    while values and values[-1] is None:
        values.pop()
    return values


def input_series(recorded: Sequence[Series], names: set[str], clock: Clock) -> list[dict[str, str]]:
    """One promtool input series per series of each recorded process; see the module docstring."""
    out = []
    for series in recorded:
        by_step: dict[int, dict[str, dict[Key, float]]] = {}
        for sample in series.samples:
            by_step[clock.step(sample.at)] = {n: dict(sample.scrape.samples.get(n, {})) for n in names}
        if not by_step:
            continue
        keys = sorted({(n, k) for snap in by_step.values() for n, ks in snap.items() for k in ks})
        for name, key in keys:
            out.append({"series": _labels(name, key, series.instance),
                        "values": expand(_values(series, by_step, name, key, clock))})
    return out
