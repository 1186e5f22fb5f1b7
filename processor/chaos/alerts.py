"""Chaos experiments: the alert check. The series scraped during the experiment are fed to the generated
rules as a promtool unit test, which says which alerts fired, when, and whether they cleared.

How the recorded run becomes a promtool test (all of it is written to the report directory, so
``promtool test rules alerts_test.yml`` there replays it):

- **Shrunk SLO windows.** The topology's SLOs have 30-day windows, so their burn-rate pairs are hours
  long. The rules are generated for a copy of the topology whose SLO windows are ``SLO_WINDOW`` (1 day):
  ``SLO.burn_windows`` scales the Workbook's pairs with it, so the pages become 2m/1m at 14.4x and 12m/1m
  at 6x, the tickets 48m/4m at 3x and 144m/12m at 1x. Objectives, thresholds, the operational alerts and
  their ``for`` durations are the real ones. Faults are not shrunk with the windows: a catch-up burst that
  an hour of traffic would dilute can page in a 2-minute window, so an experiment may tolerate a page it
  names (``Experiment.may_page``), and says why.
- **The series.** Every scrape of every process (1 s apart) becomes one sample of its series, labelled
  with the process's ``instance`` as Prometheus would; a process that stopped gets a stale marker, as a
  failed scrape would give it. Timestamps (``*_timestamp_seconds``) are moved onto promtool's clock.
- **History and aftermath.** Before the recording, a steady history as long as the longest page window
  is prepended for the processes that were there from the start: gauges held at their first value
  (caught-up lag, breakers closed), counters growing with the traffic the load had before the fault (the
  load's own rate when the fault starts with it: ``processor.chaos.judge``), every event of it good
  (each histogram bucket at its count's rate, outcome counters for success only:
  ``processor.chaos.series._history_rate``), so a window does not
  begin with the experiment, a short fault is diluted as it would be in a healthy fleet that ran before
  it, and the invented history itself never burns budget. After the recording the final
  values are extended forward (counters flat, gauges as they ended, timestamps advancing), long enough for
  every alert to clear: the longest short window plus 3 minutes.
- **Verdict.** A probe test asks for the first and last firing time of every alert (its expected-nothing
  answers are read back from promtool's report); the assertion test then states what must hold: the
  expected pages fired, no other page fired, and nothing is still firing at the end.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from processor.chaos.record import Series
from processor.chaos.series import Clock, input_series
from processor.ops.rules import render_rules
from processor.topology.slo import window_seconds
from processor.topology.topology import Topology

SLO_WINDOW = "1d"
EVALUATION_INTERVAL_SECONDS = 5
PROMTOOL_TIMEOUT_SECONDS = 300.0
_METRIC = re.compile(r"\b(processor_[a-z0-9_]+)\b")
_GOT = re.compile(r'\{alertname="([^"]+)", severity="([^"]+)", which="(first|last)"\} ([-+0-9.eE]+)')


def shrunk(topology: Topology, window: str = SLO_WINDOW) -> Topology:
    """A copy of ``topology`` whose SLO windows are ``window`` (see the module docstring)."""
    return dataclasses.replace(topology, slos=tuple(dataclasses.replace(s, window=window) for s in topology.slos))


def history_seconds(topology: Topology) -> int:
    """The longest window of a page: the steady history needed before the recording."""
    pairs = [p for slo in topology.slos for p in slo.burn_windows() if p.severity == "page"]
    return max([window_seconds(p.long) for p in pairs], default=0)


def aftermath_seconds(topology: Topology) -> int:
    """Long enough for every alert to clear: the longest short window (of a ticket too) plus 3 minutes
    (longer than every ``for`` of an alert that can be firing when the fault ends)."""
    shorts = [window_seconds(p.short) for slo in topology.slos for p in slo.burn_windows()]
    return max(shorts, default=0) + 180


def rule_metrics(rules_text: str) -> set[str]:
    """The scraped metric names the rules read (recorded series, with colons, are not scraped)."""
    return set(_METRIC.findall(rules_text))


@dataclass(frozen=True)
class AlertVerdict:
    """What the alert check found; times are seconds from the first scrape (negative: in the steady history
    replayed before it)."""

    fired: dict[tuple[str, str], tuple[float, float]]  # (alert, severity) -> first and last firing evaluation
    expected: tuple[str, ...]
    unexpected_pages: tuple[str, ...]
    missing_pages: tuple[str, ...]
    promtool_passed: bool
    detail: str

    @property
    def ok(self) -> bool:
        return self.promtool_passed and not self.unexpected_pages and not self.missing_pages

    def summary(self) -> str:
        pages = sorted((first, last, a) for (a, severity), (first, last) in self.fired.items() if severity == "page")
        if not pages:
            text = "no page"
        else:
            # Signed: a page in the replayed history (a tolerated one) read "+-715s".
            text = "; ".join(f"{a} paged {first:+.0f}s, cleared {last + EVALUATION_INTERVAL_SECONDS:+.0f}s"
                             for first, last, a in pages)
        return ("ok: " if self.ok else "FAIL: ") + text


def _groups_order(rules: dict[str, Any]) -> list[str]:
    # Recording groups before the alerts that read them, as tests/promtool/orders_rules_test.yml does.
    names = [g["name"] for g in rules["groups"]]
    return sorted(names, key=lambda n: (n.startswith("processor-slo-alerts"), n.startswith("processor-operations")))


def check_alerts(topology: Topology, recorded: Sequence[Series], t0: float, end: float, workdir: Path,
                 pages: Iterable[str], may_page: Iterable[str], steady: tuple[float, float] | None = None,
                 ) -> AlertVerdict:
    """Write the rules and the probe and assertion tests to ``workdir``, run promtool, return the verdict."""
    promtool = shutil.which("promtool")
    expected, tolerated = tuple(sorted(pages)), set(may_page)
    if promtool is None:
        return AlertVerdict({}, expected, (), (), False, "promtool is not installed (Debian: prometheus)")
    copy = shrunk(topology)
    rules_text = render_rules(copy)
    (workdir / "rules.yml").write_text(rules_text)
    history, aftermath = history_seconds(copy), aftermath_seconds(copy)
    clock = Clock(t0, end, history, aftermath, steady)
    series = input_series(recorded, rule_metrics(rules_text), clock)
    last = clock.steps - 1
    last -= last % EVALUATION_INTERVAL_SECONDS
    order = _groups_order(yaml.safe_load(rules_text))

    def test_file(name: str, checks: list[dict[str, Any]]) -> Path:
        doc = {"rule_files": ["rules.yml"], "evaluation_interval": f"{EVALUATION_INTERVAL_SECONDS}s",
               "group_eval_order": order,
               "tests": [{"interval": "1s", "input_series": series, "promql_expr_test": checks}]}
        path = workdir / name
        path.write_text(f"# {__doc__.splitlines()[0] if __doc__ else ''}\n" + yaml.safe_dump(doc, width=1000))
        return path

    firing = f'timestamp(ALERTS{{alertstate="firing"}})[{last}s:{EVALUATION_INTERVAL_SECONDS}s]'
    probe = (f'label_replace(min by (alertname, severity) (min_over_time({firing})), "which", "first", "", "") or '
             f'label_replace(max by (alertname, severity) (max_over_time({firing})), "which", "last", "", "")')
    found = _run(promtool, test_file("alerts_probe.yml", [{"expr": probe, "eval_time": f"{last}s", "exp_samples": []}]))
    times: dict[tuple[str, str, str], float] = {}
    for alert, severity, which, value in _GOT.findall(found.stdout + found.stderr):
        times[(alert, severity, which)] = float(value) - history
    fired = {(a, sev): (t, times.get((a, sev, "last"), t)) for (a, sev, which), t in times.items() if which == "first"}
    unexpected = tuple(sorted(a for a, sev in fired if sev == "page" and a not in expected and a not in tolerated))
    missing = tuple(a for a in expected if (a, "page") not in fired)
    exclude = "|".join(sorted(tolerated)) or "$^"
    pages_fired = (f'max by (alertname) (max_over_time(ALERTS{{alertstate="firing",severity="page",'
                   f'alertname!~"{exclude}"}}[{last}s]))')
    asserted = _run(promtool, test_file("alerts_test.yml", [
        {"expr": pages_fired, "eval_time": f"{last}s",
         "exp_samples": [{"labels": f'{{alertname="{a}"}}', "value": 1} for a in expected]},
        {"expr": 'ALERTS{alertstate="firing"}', "eval_time": f"{last}s", "exp_samples": []},
    ]))
    detail = f"history {history}s, recorded {end - t0:.0f}s, aftermath {aftermath}s; SLO windows shrunk to {SLO_WINDOW}"
    if asserted.returncode != 0:
        detail += "; promtool: " + " ".join((asserted.stdout + asserted.stderr).split())[-600:]
    return AlertVerdict(fired, expected, unexpected, missing, asserted.returncode == 0, detail)


def _run(promtool: str, path: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([promtool, "test", "rules", path.name], cwd=path.parent, capture_output=True,
                              text=True, timeout=PROMTOOL_TIMEOUT_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess([promtool], 1, "", f"promtool took over {PROMTOOL_TIMEOUT_SECONDS:.0f}s")
