"""Chaos experiments: the report. A table for the terminal, and a markdown and a JSON file per run with,
per experiment, the fault timeline, the numbers, every check, the metrics comparison and the alerts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from processor.chaos.alerts import SLO_WINDOW
from processor.chaos.judge import Outcome

COLUMNS = (("experiment", 0), ("events", 7), ("lost", 5), ("dup effects", 12), ("max lag", 8),
           ("recovery", 9), ("result", 7), ("alert verdict", 0))


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def table(outcomes: Sequence[Outcome]) -> str:
    """experiment, events, lost, duplicated side effects, max lag, recovery time, result, alert verdict."""
    # The first column as wide as the longest name (broker-rolling-restart ran into its events otherwise).
    first = max([len(COLUMNS[0][0]), *(len(o.experiment) for o in outcomes)]) + 2
    widths = (first, *(w for _, w in COLUMNS[1:]))
    header = "".join(f"{name:<{w}}" if w else name for (name, _), w in zip(COLUMNS, widths, strict=True))
    lines = [header, "-" * max(len(header), 100)]
    for o in outcomes:
        cells = (o.experiment, str(o.events), str(o.lost), str(o.duplicated_effects), f"{o.max_lag_messages:.0f}",
                 _seconds(o.recovery_seconds), "PASS" if o.passed else "FAIL", o.alert if not o.error else o.error)
        lines.append("".join(f"{c:<{w}}" if w else c for c, w in zip(cells, widths, strict=True)))
    return "\n".join(lines)


def _section(o: Outcome) -> list[str]:
    out = [f"## {o.experiment}: {'PASS' if o.passed else 'FAIL'}", "",
           f"- run id `{o.run_id}`, {o.elapsed_seconds:.0f}s; logs of every process in `{o.log_dir}`",
           f"- hypothesis: {o.hypothesis}", f"- fault: {o.fault}"]
    if o.error:
        out.append(f"- **error**: {o.error}")
    out += ["", "| t (s) | | what |", "|---:|---|---|"]
    out += [f"| {t:.1f} | {kind} | {text} |" for t, kind, text in o.timeline]
    out += ["", "| events in | outputs | lost | duplicated side effects | handler re-runs | repeated outputs | "
            "retries | DLQ entries | max lag | p99 before / during / after | recovery | lag 0 after |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
            f"| {o.events} | {o.outputs} | {o.lost} | {o.duplicated_effects} | {o.reruns} | {o.repeated_outputs} | "
            f"{o.retries} | {o.dlq_entries} | {o.max_lag_messages:.0f} msgs, {o.max_lag_seconds:.1f}s | "
            f"{' / '.join(_ms(o.p99_ms.get(k)) for k in ('before', 'during', 'after'))} | "
            f"{_seconds(o.recovery_seconds)} | {_seconds(o.lag_zero_seconds)} |", ""]
    if o.handlers:
        keys = list(o.handlers[0])
        out += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        out += ["| " + " | ".join(str(h[k]) for k in keys) + " |" for h in o.handlers]
        out.append("")
    out += ["Checks:", ""] + [f"- {'ok' if c.ok else '**FAILED**'} {c.name}: {c.detail}" for c in o.checks]
    if o.agreements:
        out += ["", "| handler | count | /metrics | verifier | tolerance |", "|---|---|---:|---:|---:|"]
        out += [f"| {g.handler} | {g.what} | {g.metrics:g} | {g.verifier:g} | {g.tolerance} |" for g in o.agreements]
    if o.alerts_fired:
        out += ["", "| alert (severity) | first firing (s) | last firing (s) |", "|---|---:|---:|"]
        out += [f"| {a} | {first} | {last} |" for a, (first, last) in o.alerts_fired.items()]
    out += [""] + [f"Note: {n}" for n in o.notes] + [""]
    return out


ABOUT = (
    "Each experiment ran on a stack of its own and verified, per handler, every input of the run: processed or "
    "dead-lettered once (outputs and DLQs read back from the beginning, filtered to the run id), side effects "
    "at most once (the simulated services' ledgers in Redis), lag back to 0, and the workers' /metrics (each "
    "process's last scrape; scraped every second) against the verifier's counts. Times in the timeline are "
    "seconds from the first scrape. p99 is processing time (histogram, all handlers). Recovery: from the last "
    "heal until the last event slower than the steady state was done. The alert check feeds the recorded series "
    f"to the generated rules in a promtool unit test, with the SLO windows shrunk to {SLO_WINDOW} (pages at "
    "2m/1m and 12m/1m), a steady history prepended and the final values extended forward until every alert "
    "clears (see processor/chaos/alerts.py); each experiment's directory holds rules.yml, alerts_probe.yml and "
    "alerts_test.yml, which `promtool test rules alerts_test.yml` replays."
)


def markdown(outcomes: Sequence[Outcome], meta: Mapping[str, Any]) -> str:
    passed = sum(o.passed for o in outcomes)
    out = ["# Chaos experiments", "",
           f"{passed} of {len(outcomes)} passed; topology `{meta.get('topology')}`, {meta.get('target')}, "
           f"{meta.get('elapsed_seconds', 0):.0f}s in all.", "", ABOUT, "", "```", table(outcomes), "```", ""]
    for o in outcomes:
        out += _section(o)
    return "\n".join(out)


def write_report(outcomes: Sequence[Outcome], path: Path, meta: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``path`` (markdown) and the same name with ``.json``; returns both paths."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(outcomes, meta))
    json_path = path.with_suffix(".json")
    json_path.write_bytes(orjson.dumps({"meta": dict(meta), "experiments": [o.as_json() for o in outcomes]},
                                       option=orjson.OPT_INDENT_2))
    return path, json_path
