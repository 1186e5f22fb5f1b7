"""Chaos experiments: the verdict. The shared steady-state hypothesis, the experiment's own checks and the
alert check, over what a run observed; and the numbers the report shows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from processor.chaos.alerts import check_alerts
from processor.chaos.metrics import Agreement, crash_tolerance, max_lag, total, window_quantile
from processor.chaos.model import CheckResult, Experiment, Observed
from processor.chaos.record import Mark
from processor.chaos.series import STEADY_MIN_SECONDS
from processor.chaos.verify import recovery_seconds, steady_bound
from processor.topology.topology import Topology


@dataclass(frozen=True)
class Outcome:
    """One experiment's result, as the report and the table show it (JSON-friendly via ``as_json``)."""

    experiment: str
    run_id: str
    hypothesis: str
    fault: str
    passed: bool
    error: str | None = None
    events: int = 0  # input records produced
    units: int = 0
    outputs: int = 0
    lost: int = 0
    duplicated_effects: int = 0
    reruns: int = 0
    repeated_outputs: int = 0
    retries: int = 0
    dlq_entries: int = 0
    max_lag_messages: float = 0.0
    max_lag_seconds: float = 0.0
    p99_ms: dict[str, float | None] = field(default_factory=dict)  # before, during, after the fault
    recovery_seconds: float | None = None
    lag_zero_seconds: float | None = None
    alert: str = "-"
    alerts_fired: dict[str, list[float]] = field(default_factory=dict)  # "alert (severity)": first, last firing
    checks: tuple[CheckResult, ...] = ()
    agreements: tuple[Agreement, ...] = ()
    handlers: tuple[dict[str, Any], ...] = ()
    timeline: tuple[tuple[float, str, str], ...] = ()  # seconds from the first scrape
    elapsed_seconds: float = 0.0
    log_dir: str = ""
    notes: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _timeline(marks: Sequence[Mark], t0: float) -> tuple[tuple[float, str, str], ...]:
    return tuple((round(m.at - t0, 1), m.kind, m.text) for m in marks)


def failed(exp: Experiment, run_id: str, error: str, marks: Sequence[Mark], workdir: Path, elapsed: float) -> Outcome:
    """The outcome of an experiment that could not run to its verdict."""
    t0 = marks[0].at if marks else 0.0
    return Outcome(exp.name, run_id, exp.hypothesis, exp.fault.describe(), passed=False, error=error,
                   timeline=_timeline(marks, t0), elapsed_seconds=round(elapsed, 1), log_dir=str(workdir),
                   notes=exp.notes, checks=(CheckResult("experiment ran to its verdict", False, error),))


def agreements(exp: Experiment, obs: Observed) -> list[Agreement]:
    """The workers' counts (each process's last scrape, summed) against the verifier's, per handler."""
    workers = obs.workers()
    out = []
    for a in obs.accounts:
        tol = crash_tolerance(workers, a.handler) if exp.fault.crash else 0
        out += [
            Agreement(a.handler, "processed (success)", total(workers, "processor_events_total", handler=a.handler,
                                                              outcome="success"), a.processed, tol),
            # A record delivered again after a rebalance (processed, not yet committed when its partition moved)
            # is skipped again: the workers count deliveries, the verifier inputs, so only ">=" can hold.
            Agreement(a.handler, "skipped duplicates (>=)", total(workers, "processor_events_total",
                                                                  handler=a.handler, outcome="duplicate"),
                      obs.expected_duplicates, tol, at_least=True),
            Agreement(a.handler, "dead letters", total(workers, "processor_dead_letters_total", handler=a.handler),
                      a.dlq_entries, tol),
            Agreement(a.handler, "retries", total(workers, "processor_retries_total", handler=a.handler), a.retries,
                      tol),
        ]
    return out


def hypothesis(exp: Experiment, obs: Observed, agreed: Sequence[Agreement]) -> list[CheckResult]:
    """The steady-state hypothesis every experiment shares (see ``processor.chaos.model``)."""
    crash = exp.fault.crash
    lost = {a.handler: len(a.lost) for a in obs.accounts if a.lost}
    examples = [u for a in obs.accounts for u in a.lost[:3]]
    produced = len(obs.production.produced_at)
    repeated = sum(len(a.repeated) for a in obs.accounts)
    tolerance = {a.handler: crash_tolerance(obs.workers(), a.handler) for a in obs.accounts} if crash else {}
    reruns = {e.handler: e.reruns for e in obs.effects if e.reruns}
    unexplained = [r for e in obs.effects for r in e.unexplained_reruns]
    unexpected = [u for a in obs.accounts for u in a.unexpected]
    bad_headers = sum(a.bad_headers for a in obs.accounts)
    duplicated = sum(e.duplicated for e in obs.effects)
    orphans = sum(len(e.without_output) for e in obs.effects)
    disagree = [f"{g.handler} {g.what}: metrics {g.metrics:g}, verifier {g.verifier:g}" for g in agreed if not g.ok]
    redelivered = sum(max(0.0, g.metrics - g.verifier) for g in agreed if g.at_least)
    return [
        CheckResult("every input accounted for by every handler", not lost and not obs.production.errors,
                    f"{len(obs.units)} units from {produced} records; lost per handler {lost or 0}"
                    + (f", e.g. {examples}" if examples else "")
                    + (f"; producer errors: {obs.production.errors[:3]}" if obs.production.errors else "")),
        CheckResult("no side effect twice", duplicated == 0,
                    f"{sum(e.effects for e in obs.effects)} effects, {duplicated} duplicated; {orphans} of events "
                    "without an output"),
        CheckResult("outputs repeat only in crash windows, with the event id header",
                    bad_headers == 0 and (repeated == 0 or (crash and all(
                        len(a.repeated) <= tolerance.get(a.handler, 0) for a in obs.accounts))),
                    f"{repeated} units with a repeated output or dead letter; {bad_headers} outputs without their "
                    "event id header" + (f"; crash tolerance {tolerance}" if crash else "")),
        CheckResult("handler re-runs only where explained",
                    not unexplained and all(n <= tolerance.get(h, 0) for h, n in reruns.items() if crash),
                    f"re-runs {reruns or 0}; unexplained {unexplained[:5] or 0}"
                    + (f" (a crash re-runs the events in flight: at most {tolerance})" if crash else
                       " (a re-run must follow a retry of that event)")),
        CheckResult("dead letters as expected", not unexpected,
                    "; ".join(unexpected[:5]) or ("every poison record dead-lettered with its reason" if exp.poison
                                                 else "no input dead-lettered for the wrong reason")),
        CheckResult("lag back to 0", obs.lag_zero_seconds is not None,
                    f"{obs.lag_zero_seconds:.1f}s after the last input was accounted for"
                    if obs.lag_zero_seconds is not None else "lag did not reach 0 in time"),
        CheckResult("/metrics agree with the verifier", not disagree,
                    "; ".join(disagree[:6]) or f"{len(agreed)} counts agree"
                    + (" within the crash tolerance (a killed replica's last counts die with it)" if crash else
                       " exactly") + (f"; {redelivered:g} redelivered records skipped again" if redelivered else "")),
    ]


def _p99(obs: Observed, start: float, end: float) -> float | None:
    if end <= start:
        return None
    value = window_quantile(obs.workers(), 0.99, start, end, "processor_processing_seconds")
    return None if math.isnan(value) else round(value * 1000, 1)


def _steady(obs: Observed, fault_start: float) -> tuple[float, float]:
    """The fault-free traffic whose rates the alert check's history gets (processor.chaos.alerts)."""
    if fault_start - obs.load_started_at >= STEADY_MIN_SECONDS:
        return obs.load_started_at, fault_start
    # The fault starts with the load, so no traffic ran without it, and a history without traffic left the
    # run's first seconds undiluted: new workers' first batches on a fresh 3-broker cluster put 2-5% of
    # events above 500 ms (measured), which paged the latency SLO through the 2-minute window in experiments
    # whose fault has nothing to do with latency. A fleet that ran before would have carried this same
    # load: the history gets the load's event rate, every event of it good (processor.chaos.series), while
    # a fault that lasts the load still burns far past a page's rate (100% slow for 6 s of a 2-minute window
    # is 5%; a page needs 1.44%).
    return obs.load_started_at, max(obs.production.produced_at.values(), default=obs.load_started_at)


def judge(exp: Experiment, topology: Topology, obs: Observed, workdir: Path, elapsed: float) -> Outcome:
    """Every check over ``obs``, the alert check, and the report's numbers."""
    agreed = agreements(exp, obs)
    checks = hypothesis(exp, obs, agreed) + [check(obs) for check in exp.checks]
    injects = [m.at for m in obs.timeline if m.kind == "inject"]
    heals = [m.at for m in obs.timeline if m.kind == "heal"] or injects
    fault_start, fault_end = min(injects, default=obs.started_at), max(heals, default=obs.started_at)
    verdict = check_alerts(topology, obs.series, obs.started_at, obs.ended_at, workdir, exp.pages, exp.may_page,
                           steady=_steady(obs, fault_start))
    expected = (", ".join(sorted(exp.pages)) or "no page") + (
        f" (tolerated: {', '.join(sorted(exp.may_page))})" if exp.may_page else "")
    checks.append(CheckResult(f"alerts: {expected}", verdict.ok, f"{verdict.summary()} ({verdict.detail})"))
    done_at = [a.done_at for a in obs.accounts]
    complete = not any(a.lost for a in obs.accounts)
    bound = steady_bound(done_at, obs.units, fault_start)
    peak = max_lag(obs.series, {h.source for h in topology.handlers})
    return Outcome(
        experiment=exp.name, run_id=obs.run_id, hypothesis=exp.hypothesis, fault=exp.fault.describe(),
        passed=all(c.ok for c in checks), events=len(obs.production.produced_at), units=len(obs.units),
        outputs=sum(a.outputs for a in obs.accounts), lost=sum(len(a.lost) for a in obs.accounts),
        duplicated_effects=sum(e.duplicated for e in obs.effects), reruns=sum(e.reruns for e in obs.effects),
        repeated_outputs=sum(len(a.repeated) for a in obs.accounts), retries=sum(a.retries for a in obs.accounts),
        dlq_entries=sum(a.dlq_entries for a in obs.accounts), max_lag_messages=peak.messages,
        max_lag_seconds=round(peak.seconds, 1),
        p99_ms={"before": _p99(obs, obs.started_at, fault_start), "during": _p99(obs, fault_start, fault_end),
                "after": _p99(obs, fault_end, obs.ended_at)},
        recovery_seconds=round(recovery_seconds(done_at, obs.units, fault_end, bound), 1) if complete else None,
        lag_zero_seconds=obs.lag_zero_seconds, alert=verdict.summary(),
        alerts_fired={f"{a} ({sev})": [round(first, 1), round(last, 1)]
                      for (a, sev), (first, last) in sorted(verdict.fired.items())},
        checks=tuple(checks), agreements=tuple(agreed),
        handlers=tuple({"handler": a.handler, "units": a.units, "processed": a.processed,
                        "dead_lettered": a.dead_lettered, "lost": len(a.lost), "repeated": len(a.repeated),
                        "outputs": a.outputs, "dlq_entries": a.dlq_entries, "retries": a.retries,
                        "effects": e.effects, "duplicated_effects": e.duplicated, "reruns": e.reruns}
                       for a, e in zip(obs.accounts, obs.effects, strict=True)),
        timeline=_timeline(obs.timeline, obs.started_at), elapsed_seconds=round(elapsed, 1), log_dir=str(workdir),
        notes=(*exp.notes, f"steady-state bound for recovery: {bound:.1f}s per event (3 x the p99 delay of "
               "the events done before the fault began, at least 1 s)"),
    )
