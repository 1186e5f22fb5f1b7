"""Prometheus recording and alerting rules for a topology's SLOs and its operational failure modes.

Recording rules, per SLO, one per range (each window of ``slo.burn_windows()`` and the SLO window):

- ``processor_slo:error_ratio:rate<range>``: the share of bad events (or of bad time, for lag) over the range;
- ``processor_slo:burn_rate:rate<range>``: that ratio divided by the error budget (alert windows only);
- ``processor_slo:events:increase<range>`` (latency and delivery SLOs, long alert windows): the events counted,
  which a burn alert needs ``min_events`` of (processor.topology.slo);
- ``processor_slo:error_budget_remaining:ratio``: 1 - the ratio over the SLO window / the budget;
- ``processor_slo:lag_over_threshold:bool`` (lag SLOs): 1 while the topology's worst lag is over the threshold.

Each carries ``slo`` (``<topology>:<name>``), ``topology`` and ``slo_name``. The burn-rate alerts are the SRE
Workbook's multi-window, multi-burn-rate alerts: one rule per window pair, firing while the error ratio over
both the long and the short window exceeds ``factor`` x the budget. The operational alerts cover the lag
status of each consumer group, the lag monitor itself, circuit breakers and dependencies.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, cast

import yaml
from prometheus_client.utils import floatToGoString as _untyped_float_to_go_string

from processor.topology.policy import DEFER_REASON, Defer, StretchBackoff
from processor.topology.retry import parse_duration
from processor.topology.slo import SLO, BurnWindow, window_seconds
from processor.topology.topology import Topology

RUNBOOK_BASE = "https://github.com/processor-dev/processor/blob/main/processor/ops/runbooks/"

ERROR_RATIO = "processor_slo:error_ratio:rate{range}"
BURN_RATE = "processor_slo:burn_rate:rate{range}"
EVENTS = "processor_slo:events:increase{range}"
BUDGET_REMAINING = "processor_slo:error_budget_remaining:ratio"
LAG_OVER_THRESHOLD = "processor_slo:lag_over_threshold:bool"

# The SLO-window ratio reads up to 30 days of samples per series; it changes slowly and feeds no alert, so
# it is evaluated in its own group at this interval instead of at every (5 s) global evaluation.
BUDGET_INTERVAL = "5m"

FORECAST_HORIZON_SECONDS = 3600  # a lag forecast under this opens a ticket

# One alert name per SLI kind (the runbook differs by kind; the window pair is the `window` label).
BURN_ALERTS = {
    "latency": "ProcessorLatencyBudgetBurn",
    "delivery": "ProcessorDeliveryBudgetBurn",
    "lag": "ProcessorLagBudgetBurn",
}
OPERATIONAL_ALERTS = (
    "ProcessorConsumerLagStop",
    "ProcessorConsumerLagStall",
    "ProcessorConsumerLagWarn",
    "ProcessorLagForecastBreach",
    "ProcessorLagMonitorStale",
    "ProcessorPartitionStalled",
    "ProcessorCircuitOpen",
    "ProcessorDependencyDown",
)
ALERT_NAMES = (*BURN_ALERTS.values(), *OPERATIONAL_ALERTS)

# prometheus_client formats the histogram `le` label with this (0.5 -> "0.5", 1.0 -> "1.0"); untyped.
_float_to_go_string = cast(Callable[[float], str], _untyped_float_to_go_string)


def runbook_file(alert: str) -> str:
    """The runbook of ``alert`` in processor/ops/runbooks/."""
    return f"{alert}.md"


def prometheus_rules(topology: Topology, runbook_base: str = RUNBOOK_BASE) -> dict[str, Any]:
    """The rule-file document (``{"groups": [...]}``) for ``topology``."""
    base = runbook_base if runbook_base.endswith("/") else runbook_base + "/"
    groups: list[dict[str, Any]] = [_slo_group(topology, slo) for slo in topology.slos]
    if topology.slos:
        groups.append({
            "name": f"processor-slo-budget:{topology.name}",
            "interval": BUDGET_INTERVAL,
            "rules": [rule for slo in topology.slos for rule in _budget_rules(topology, slo)],
        })
        groups.append({
            "name": f"processor-slo-alerts:{topology.name}",
            "rules": [rule for slo in topology.slos for rule in _burn_alerts(topology, slo, base)],
        })
    groups.append({"name": f"processor-operations:{topology.name}", "rules": _operational_alerts(topology, base)})
    return {"groups": groups}


def render_rules(topology: Topology, runbook_base: str = RUNBOOK_BASE) -> str:
    """``prometheus_rules`` as YAML text, ready for ``promtool check rules`` and Prometheus."""
    text: str = yaml.safe_dump(prometheus_rules(topology, runbook_base), sort_keys=False, width=1000)
    return text


def alert_ranges(slo: SLO) -> list[str]:
    """Every distinct long and short window of the SLO's burn-rate alerts, shortest first."""
    ranges = {w for pair in slo.burn_windows() for w in (pair.long, pair.short)}
    return sorted(ranges, key=window_seconds)


# -- SLIs --------------------------------------------------------------------------------------------------


def _slo_group(topology: Topology, slo: SLO) -> dict[str, Any]:
    """The SLO's error ratios and burn rates over its alert windows, evaluated at the global interval."""
    rules: list[dict[str, Any]] = []
    if slo.sli == "lag":
        # Recorded first: the rules below read it in the same evaluation (a group's rules run in order).
        rules.append({"record": LAG_OVER_THRESHOLD, "expr": _lag_over_threshold(topology, slo),
                      "labels": _slo_labels(topology, slo)})
    for range_ in alert_ranges(slo):
        rules.append({"record": ERROR_RATIO.format(range=range_), "expr": _error_ratio(topology, slo, range_),
                      "labels": _slo_labels(topology, slo)})
    for range_ in alert_ranges(slo):
        ratio = _series(ERROR_RATIO.format(range=range_), topology, slo)
        rules.append({"record": BURN_RATE.format(range=range_), "expr": f"{ratio} / {_num(slo.error_budget)}",
                      "labels": _slo_labels(topology, slo)})
    if _gated(slo):
        for range_ in dict.fromkeys(pair.long for pair in slo.burn_windows()):
            rules.append({"record": EVENTS.format(range=range_), "expr": _events(topology, slo, range_),
                          "labels": _slo_labels(topology, slo)})
    return {"name": f"processor-slo:{slo.label(topology.name)}", "rules": rules}


def _gated(slo: SLO) -> bool:
    return slo.sli != "lag" and slo.min_events > 0


def _budget_rules(topology: Topology, slo: SLO) -> list[dict[str, Any]]:
    ratio = ERROR_RATIO.format(range=slo.window)
    return [
        {"record": ratio, "expr": _error_ratio(topology, slo, slo.window), "labels": _slo_labels(topology, slo)},
        {"record": BUDGET_REMAINING, "expr": f"1 - {_series(ratio, topology, slo)} / {_num(slo.error_budget)}",
         "labels": _slo_labels(topology, slo)},
    ]


def _error_ratio(topology: Topology, slo: SLO, range_: str) -> str:
    """Bad / all over ``range_``.

    A window without traffic yields no series, never NaN and never a made-up 0: the denominator is
    filtered with ``> 0``. No events is no evidence either way, so such a window neither burns nor
    earns budget, and an absent ratio cannot satisfy a burn alert. The dead-letter counter gets
    ``or vector(0)`` because prometheus_client creates a labelled series only at its first increment:
    traffic without a single dead letter must read 0, not "no data".
    """
    events = _event_matchers(topology, slo)
    if slo.sli == "latency":
        le = _float_to_go_string(slo.threshold_seconds)
        good = f'sum(rate(processor_processing_seconds_bucket{{{events},le="{le}"}}[{range_}]))'
        total = f"sum(rate(processor_processing_seconds_count{{{events}}}[{range_}]))"
        return f"1 - ({good} / ({total} > 0))"
    if slo.sli == "delivery":
        bad = f'sum(rate(processor_events_total{{{events},outcome="dead_lettered"}}[{range_}]))'
        # Only finished events count: duplicates and retries are not outcomes, invalid input is the producer's.
        total = f'sum(rate(processor_events_total{{{events},outcome=~"success|dead_lettered"}}[{range_}]))'
        return f"({bad} or vector(0)) / ({total} > 0)"
    return f"avg_over_time({_series(LAG_OVER_THRESHOLD, topology, slo)}[{range_}])"


def _events(topology: Topology, slo: SLO, range_: str) -> str:
    """The events an events SLI counted over ``range_``: the denominator of its ratio, as a count."""
    events = _event_matchers(topology, slo)
    if slo.sli == "latency":
        return f"sum(increase(processor_processing_seconds_count{{{events}}}[{range_}]))"
    return f'sum(increase(processor_events_total{{{events},outcome=~"success|dead_lettered"}}[{range_}]))'


def _lag_over_threshold(topology: Topology, slo: SLO) -> str:
    # Source topics only: a record in a retry topic waits for its tier's delay by design, so its age says
    # nothing about whether the consumer keeps up (a 30 s tier would burn a 30 s lag SLO on every retry).
    return f"max(processor_consumer_lag_seconds{{{_lag_matchers(topology, slo)}}}) > bool {_num(slo.threshold_seconds)}"


def _event_matchers(topology: Topology, slo: SLO) -> str:
    matchers = f"topology={promql_string(topology.name)}"
    return matchers + (f",handler={promql_string(slo.handler)}" if slo.handler else "")


def _lag_matchers(topology: Topology, slo: SLO) -> str:
    if slo.handler:
        spec = topology.get(slo.handler)
        return f"group={promql_string(topology.group(spec.name))},topic={promql_string(spec.source)}"
    sources = list(dict.fromkeys(h.source for h in topology.handlers))
    if len(sources) == 1:
        return f"{group_matcher(topology)},topic={promql_string(sources[0])}"
    topic = f"topic=~{promql_string('|'.join(map(regex_literal, sources)))}"
    return f"{group_matcher(topology)},{topic}"


def group_matcher(topology: Topology) -> str:
    """Every consumer group of the topology: ``<topology>.<handler>``."""
    pattern = regex_literal(topology.name) + r"\..+"
    return f"group=~{promql_string(pattern)}"


def _slo_labels(topology: Topology, slo: SLO) -> dict[str, str]:
    # A new dict per rule: yaml.safe_dump writes a shared dict as an anchor and aliases (&id001/*id001).
    return {"slo": slo.label(topology.name), "topology": topology.name, "slo_name": slo.name}


def _series(name: str, topology: Topology, slo: SLO) -> str:
    return f"{name}{{slo={promql_string(slo.label(topology.name))}}}"


# -- burn-rate alerts --------------------------------------------------------------------------------------


def _burn_alerts(topology: Topology, slo: SLO, runbook_base: str) -> list[dict[str, Any]]:
    alert = BURN_ALERTS[slo.sli]
    rules = []
    for pair in slo.burn_windows():
        threshold = f"({_num(pair.factor)} * {_num(slo.error_budget)})"
        long = _series(ERROR_RATIO.format(range=pair.long), topology, slo)
        short = _series(ERROR_RATIO.format(range=pair.short), topology, slo)
        # No `for:`: the long window proves the burn is sustained and the short one that it is still going
        # on (it also resets the alert within minutes of a fix); a `for` would only delay the page.
        expr = f"{long} > {threshold} and {short} > {threshold}"
        if _gated(slo):
            expr += f" and {_series(EVENTS.format(range=pair.long), topology, slo)} >= {slo.min_events}"
        rules.append({
            "alert": alert,
            "expr": expr,
            "labels": {"severity": pair.severity, "slo": slo.label(topology.name), "topology": topology.name,
                       "window": f"{pair.long}/{pair.short}"},
            "annotations": {
                "summary": f"SLO {slo.label(topology.name)}: error budget burning over {_num(pair.factor)}x "
                           f"({pair.long} and {pair.short} windows)",
                "description": _burn_description(topology, slo, pair),
                "runbook_url": runbook_base + runbook_file(alert),
            },
        })
    return rules


def _burn_description(topology: Topology, slo: SLO, pair: BurnWindow) -> str:
    scope = f"handler {slo.handler}" if slo.handler else f"topology {topology.name}"
    bad = {
        "latency": f"of the events of {scope} over the last {pair.long} took longer than {slo.threshold}",
        "delivery": f"of the events of {scope} finished over the last {pair.long} were dead-lettered",
        "lag": f"of the last {pair.long} {scope} had a consumer lag over {slo.threshold}",
    }[slo.sli]
    return (
        f"{{{{ $value | humanizePercentage }}}} {bad} (objective {_pct(slo.objective)} over {slo.window}, an "
        f"error budget of {_pct(slo.error_budget)}). Both the last {pair.long} and the last {pair.short} burn "
        f"the budget over {_num(pair.factor)}x as fast as the objective allows; at {_num(pair.factor)}x a "
        f"whole {slo.window} budget lasts {_human_duration(slo.window_seconds / pair.factor)}."
        + (f" (It fires only on {slo.min_events} events or more in the {pair.long} window.)" if _gated(slo) else "")
    )


# -- operational alerts ------------------------------------------------------------------------------------


def _operational_alerts(topology: Topology, runbook_base: str) -> list[dict[str, Any]]:
    groups = group_matcher(topology)
    labels = {"topology": topology.name}

    def alert(name: str, expr: str, for_: str, severity: str, summary: str, description: str) -> dict[str, Any]:
        return {"alert": name, "expr": expr, "for": for_, "labels": {"severity": severity, **labels},
                "annotations": {"summary": summary, "description": description,
                                "runbook_url": runbook_base + runbook_file(name)}}

    def status(value: str) -> str:
        # max by (group): lag series come from the one elected monitor, but every worker exports them while
        # Redis (the election) is down; the max counts a group once either way.
        return f'max by (group) (processor_consumer_lag_status{{{groups},status="{value}"}}) == 1'

    rules = [
        alert("ProcessorConsumerLagStop", status("STOP"), "1m", "page",
              "Consumer group {{ $labels.group }} has stopped: lag grows and no member consumes",
              "The lag monitor rates {{ $labels.group }} STOP: its committed offsets have not moved and its lag "
              "has not shrunk over the monitor's window, and the group has no active member. No worker "
              f"processes this handler of topology {topology.name}."),
        # The status is the worst partition's, retry topics included: a partition of a retry tier waits up to
        # its delay with its offset still, which reads as STALL, so the `for` outlasts the longest delay.
        alert("ProcessorConsumerLagStall", status("STALL") + _unless_deferred(topology), _stall_for(topology),
              "page",
              "Consumer group {{ $labels.group }} is stalled: members are up but offsets do not move",
              "The lag monitor rates {{ $labels.group }} STALL: the group has members, but its committed "
              "offsets have not moved and its lag has not shrunk over the monitor's window. Workers are up "
              "and stuck (an open breaker, a blocked handler, a failing commit)."),
        alert("ProcessorConsumerLagWarn", status("WARN"), "10m", "ticket",
              "Consumer group {{ $labels.group }} is falling behind",
              "The lag monitor has rated {{ $labels.group }} WARN for 10 minutes: it commits, but its lag grew "
              "at every sample. The workers process slower than events arrive."),
        *_forecast_alerts(topology, alert),
        # Every worker runs the monitor and stamps each pass, so one stale stamp is one stuck worker (the
        # lease moves to another worker within 15 s and lag is still measured): a ticket.
        alert("ProcessorLagMonitorStale", "time() - processor_monitor_last_run_timestamp_seconds > 60", "5m",
              "ticket", "The lag monitor of {{ $labels.instance }} has not run for over a minute",
              "{{ $labels.instance }} last finished a monitor pass {{ $value | humanizeDuration }} ago (the "
              "monitor runs every 5 s by default). Its event loop is blocked or its monitor task died."),
        # No stamp at all means no worker is scraped: nothing measures lag, and since every other signal
        # comes from the workers too, a complete stop of processing would raise no other alert. A page.
        alert("ProcessorLagMonitorStale", "absent(processor_monitor_last_run_timestamp_seconds)", "5m", "page",
              "No worker exports processor_monitor_last_run_timestamp_seconds: nothing is measured",
              "For 5 minutes Prometheus has scraped no lag monitor. Either no worker runs, or none is "
              f"scraped; consumer lag of topology {topology.name} is not measured and the lag and SLO alerts "
              "cannot fire."),
    ]
    # The worker seeks a stalled partition, then rejoins the group: 2m outlasts both (processor.runtime.stall).
    rules.append(alert(
        "ProcessorPartitionStalled",
        f"max by (handler, instance) (processor_stalled_partitions{{topology={promql_string(topology.name)}}}) > 0",
        "2m", "page", "{{ $labels.instance }} has stalled partitions of handler {{ $labels.handler }} it cannot heal",
        "{{ $labels.instance }} reports {{ $value }} partitions of handler {{ $labels.handler }} with records to "
        "read and none delivered, nothing of ours holding them, after seeking them and rejoining the group. "
        "Their lag grows.",
    ))
    if topology.breakers:
        breakers = "|".join(regex_literal(b) for b in topology.breakers)
        # max_over_time over 1m: a breaker whose half-open probes keep failing passes through half-open for
        # a moment every `open_seconds`; a plain `== 2` would reset the `for` at each probe and never fire.
        rules.append(alert(
            "ProcessorCircuitOpen",
            f"max by (breaker) (max_over_time(processor_circuit_state{{breaker=~{promql_string(breakers)}}}[1m])) == 2",
            "5m", "ticket", "Circuit breaker {{ $labels.breaker }} has been open for 5 minutes",
            "Breaker {{ $labels.breaker }} opened and its half-open probes keep failing: the dependency it "
            "protects fails. The handlers behind it hold their partitions paused; their lag grows until "
            "it closes.",
        ))
    # A page: a worker without Redis or the broker processes nothing (it waits, never drops). The 2m rides
    # out a broker leader election or a Redis restart, which the worker's back-off absorbs by itself.
    rules.append(alert(
        "ProcessorDependencyDown", "processor_dependency_up == 0", "2m", "page",
        "{{ $labels.instance }} cannot reach {{ $labels.dependency }}",
        "{{ $labels.instance }} has reported {{ $labels.dependency }} down for 2 minutes. Workers wait with "
        "back-off and drop nothing, but they process nothing either until it is back.",
    ))
    return rules


def _forecast_alerts(topology: Topology, alert: Callable[..., dict[str, Any]]) -> list[dict[str, Any]]:
    # Only groups a lag SLO covers have a threshold to forecast. The 10m `for` outlasts a burst's trend.
    if not any(slo.sli == "lag" for slo in topology.slos):
        return []
    forecast = f'processor_lag_forecast_seconds{{{group_matcher(topology)},until="threshold"}}'
    return [alert(
        "ProcessorLagForecastBreach", f"min by (group) ({forecast}) < {FORECAST_HORIZON_SECONDS}", "10m", "ticket",
        "Consumer group {{ $labels.group }} will cross its lag SLO's threshold within the hour",
        "At the trend of its last 5 minutes, the lag of {{ $labels.group }} crosses the lag SLO's threshold in "
        "{{ $value | humanizeDuration }} (0: it is over it). The workers fall behind their input.",
    )]


def _stall_for(topology: Topology) -> str:
    """At least 2m, and longer than the longest retry delay (with jitter, and stretched by a budget policy)."""
    stretch = max((a.factor for p in topology.budget_policies for a in p.then if isinstance(a, StretchBackoff)),
                  default=1.0)
    longest = max((parse_duration(d) * (1 + h.retry.jitter) * stretch
                   for h in topology.handlers for d in h.retry.delays), default=0)
    return f"{max(2, math.ceil(longest / 60) + 1)}m"


def _unless_deferred(topology: Topology) -> str:
    """A group a budget policy defers on purpose stands still: no STALL page for it while it is held."""
    if not any(isinstance(a, Defer) for p in topology.budget_policies for a in p.then):
        return ""
    held = (f'max by (handler) (processor_paused_partitions{{topology={promql_string(topology.name)},'
            f'reason="{DEFER_REASON}"}}) > 0')
    group = promql_string(topology.name.replace("$", "$$") + ".$1")
    return f' unless on (group) label_replace({held}, "group", {group}, "handler", "(.+)")'


# -- formatting --------------------------------------------------------------------------------------------


def regex_literal(name: str) -> str:
    """``name`` as an RE2 pattern that matches itself (re.escape would also escape '-': legal, but noisy)."""
    return re.sub(r"([.+*?()|\[\]{}^$\\])", r"\\\1", name)


def promql_string(value: str) -> str:
    """A PromQL double-quoted string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _num(value: float) -> str:
    """A number as people write it: 14.4, 6, 0.001 (float noise such as 0.0010000000000000009 removed)."""
    return f"{value:.10g}"


def _pct(value: float) -> str:
    return f"{value * 100:.10g}%"


def _human_duration(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.3g} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.3g} hours"
    return f"{seconds / 60:.3g} minutes"
