"""The worker's side of error-budget policies (processor.topology.policy): at every monitor pass, the burn rate
this worker sees decides which policies act, and the handlers' levers follow.

A policy acts once its SLO burns above ``when_burn_above`` over its window with at least the SLO's
``min_events`` counted there (one failure in ten events moves nothing, as it pages nobody), and stops once
the burn is under its recovery rate; between the two it stays as it is, so a burn hovering at the trigger
does not flap. Several active policies combine: the largest back-off factor, the lowest concurrency, and a
handler deferred while any of them defers it. Each change is logged, counted in
``processor_budget_policy_active``, and a span (``budget policy <slo>``) with an ``act`` or ``undo`` event.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from processor.observability.budget import BudgetTracker
from processor.observability.metrics import Metrics
from processor.observability.tracing import Tracing
from processor.runtime.handling import PartitionControl
from processor.runtime.scope import Levers
from processor.topology.policy import DEFER_REASON, BudgetPolicy, Defer, LowerConcurrency, StretchBackoff
from processor.topology.slo import window_seconds
from processor.topology.topology import Topology

log = logging.getLogger(__name__)


class BudgetGovernor:
    """Turns the levers of each handler as the topology's budget policies say; ``tick`` after each monitor pass."""

    def __init__(self, topology: Topology, budget: BudgetTracker, levers: Mapping[str, Levers],
                 partitions: Mapping[str, PartitionControl], metrics: Metrics, tracing: Tracing) -> None:
        topology.check_policies()
        self._topology = topology
        self._budget = budget
        self._levers = levers
        self._partitions = partitions
        self._metrics = metrics
        self._tracing = tracing
        self._slos = {slo.name: slo for slo in topology.slos}
        self._active: set[BudgetPolicy] = set()
        self._deferred: set[str] = set()
        self._export()

    def tick(self) -> None:
        changed = False
        for policy in self._topology.budget_policies:
            slo = self._slos[policy.slo]
            burn, counted = self._budget.burn(slo, window_seconds(policy.window))
            enough = slo.sli == "lag" or counted >= slo.min_events
            if policy not in self._active and burn > policy.when_burn_above and enough:
                self._active.add(policy)
                self._announce(policy, "act", burn)
                changed = True
            elif policy in self._active and burn < policy.recovery:
                self._active.discard(policy)
                self._announce(policy, "undo", burn)
                changed = True
        if changed:
            self._apply()

    async def run_tick(self) -> None:
        """``tick`` as a Faust timer callback."""
        self.tick()

    def _apply(self) -> None:
        factor: dict[str, float] = {}
        concurrency: dict[str, int] = {}
        deferred: set[str] = set()
        for policy in self._active:
            slo = self._slos[policy.slo]
            for action in policy.then:
                if isinstance(action, StretchBackoff):
                    for handler in [slo.handler] if slo.handler else list(self._levers):
                        factor[handler] = max(factor.get(handler, 1.0), action.factor)
                elif isinstance(action, LowerConcurrency):
                    concurrency[action.handler] = min(concurrency.get(action.handler, action.to), action.to)
                elif isinstance(action, Defer):
                    deferred.add(action.handler)
        for handler, levers in self._levers.items():
            levers.backoff_factor = factor.get(handler, 1.0)
            levers.concurrency = concurrency.get(handler)
        for handler in deferred - self._deferred:
            # Parked: its queued records wait too, so the capacity they would take is freed now.
            self._partitions[handler].pause_all(DEFER_REASON, park=True)
        for handler in self._deferred - deferred:
            self._partitions[handler].resume_all(DEFER_REASON)
        self._deferred = deferred
        self._export()

    def _export(self) -> None:
        # From every policy at once: two policies of one SLO may share an action, and one undone while the
        # other acts leaves it on.
        on = {(self._label(p), action.name) for p in self._active for action in p.then}
        for policy in self._topology.budget_policies:
            for action in policy.then:
                key = (self._label(policy), action.name)
                self._metrics.budget_policy_active.labels(self._topology.name, *key).set(1 if key in on else 0)

    def _announce(self, policy: BudgetPolicy, change: str, burn: float) -> None:
        label = self._label(policy)
        actions = ", ".join(action.name for action in policy.then)
        if change == "act":
            log.warning("budget policy of SLO %s acts: burn %.1fx over %s is above %gx; %s", label, burn,
                        policy.window, policy.when_burn_above, actions)
        else:
            log.warning("budget policy of SLO %s undone: burn %.1fx over %s is below %gx; %s back as declared",
                        label, burn, policy.window, policy.recovery, actions)
        span = self._tracing.tracer.start_span(f"budget policy {label}")
        span.add_event(change, {"processor.slo": label, "processor.burn_rate": burn,
                                "processor.budget_policy.actions": actions})
        span.end()

    def _label(self, policy: BudgetPolicy) -> str:
        return self._slos[policy.slo].label(self._topology.name)
