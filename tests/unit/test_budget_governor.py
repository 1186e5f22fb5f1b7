"""The budget governor's decisions, on a fake burn rate: act above the trigger (with enough events), hold in
between, undo below the recovery rate; the levers and deferrals follow; each change is a span event."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from processor.errors import ConfigError
from processor.observability.metrics import Metrics
from processor.observability.tracing import Tracing
from processor.runtime.budget_policy import BudgetGovernor
from processor.runtime.scope import Levers
from processor.topology.policy import DEFER_REASON, BudgetPolicy, Defer, LowerConcurrency, StretchBackoff
from processor.topology.slo import SLO
from processor.topology.topology import Topology


class _Burn:
    def __init__(self) -> None:
        self.rate, self.events = 0.0, 1000.0

    def burn(self, slo: SLO, seconds: float) -> tuple[float, float]:
        return self.rate, self.events


class _Partitions:
    def __init__(self) -> None:
        self.held: set[str] = set()
        self.parked = False

    def pause_all(self, reason: str, *, park: bool = False) -> None:
        self.held.add(reason)
        self.parked = park

    def resume_all(self, reason: str) -> None:
        self.held.discard(reason)


async def _handle(event: dict[str, Any], ctx: Any) -> list[Any]:
    return []


def _topology(policy: BudgetPolicy, low: str = "b") -> Topology:
    topology = Topology("shop", slos=(SLO("delivery", sli="delivery", objective=0.99, handler="a"),),
                        budget_policies=(policy,))
    for name in ("a", "b"):
        topology.handler(source="orders", name=name, concurrency=8, priority="low" if name == low else "normal")(
            _handle)
    return topology


def test_act_hold_and_undo() -> None:
    policy = BudgetPolicy("delivery", when_burn_above=6, then=(StretchBackoff(4), LowerConcurrency("a", 2),
                                                                Defer("b")))
    burn, metrics, exporter = _Burn(), Metrics(), InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    levers = {"a": Levers(), "b": Levers()}
    partitions = {"a": _Partitions(), "b": _Partitions()}
    governor = BudgetGovernor(_topology(policy), burn, levers, partitions, metrics, Tracing(provider))  # type: ignore[arg-type]

    def active(action: str) -> float | None:
        return metrics.registry.get_sample_value("processor_budget_policy_active",
                                                 {"topology": "shop", "slo": "shop:delivery", "action": action})

    burn.rate = 5.0
    governor.tick()
    assert active("defer:b") == 0
    assert levers["a"].backoff_factor == 1.0
    burn.rate = 7.0
    governor.tick()
    assert (levers["a"].backoff_factor, levers["a"].concurrency) == (4, 2)
    assert levers["b"].backoff_factor == 1.0  # the SLO is a's: only a's retries stretch
    assert partitions["b"].held == {DEFER_REASON}
    assert partitions["b"].parked  # its queued records wait too
    assert active("defer:b") == active("stretch_backoff") == 1
    burn.rate = 4.0  # under the trigger, over the recovery (3): held as it is
    governor.tick()
    assert partitions["b"].held == {DEFER_REASON}
    burn.rate = 2.0
    governor.tick()
    assert (levers["a"].backoff_factor, levers["a"].concurrency) == (1.0, None)
    assert partitions["b"].held == set()
    assert active("defer:b") == 0
    events = [(s.name, e.name) for s in exporter.get_finished_spans() for e in s.events]
    assert events == [("budget policy shop:delivery", "act"), ("budget policy shop:delivery", "undo")]


def test_too_few_events_move_nothing() -> None:
    policy = BudgetPolicy("delivery", when_burn_above=6, then=(StretchBackoff(4),))
    burn, levers = _Burn(), {"a": Levers(), "b": Levers()}
    governor = BudgetGovernor(_topology(policy), burn, levers, {"a": _Partitions(), "b": _Partitions()},  # type: ignore[arg-type]
                              Metrics(), Tracing(None))
    burn.rate, burn.events = 100.0, 10.0  # one failure in ten events
    governor.tick()
    assert levers["a"].backoff_factor == 1.0


@pytest.mark.parametrize(("policy", "low", "says"), [
    (BudgetPolicy("latency", when_burn_above=6, then=(StretchBackoff(),)), "b", "has no SLO 'latency'"),
    (BudgetPolicy("delivery", when_burn_above=6, then=(Defer("a"),)), "b", "priority='low'"),
    (BudgetPolicy("delivery", when_burn_above=6, then=(LowerConcurrency("c"),)), "b", "no handler 'c'"),
    (BudgetPolicy("delivery", when_burn_above=6, then=(LowerConcurrency("a", 8),)), "b", "not below its concurrency 8"),
])
def test_a_policy_naming_what_is_not_there_is_refused(policy: BudgetPolicy, low: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        _topology(policy, low).check_policies()


def test_policy_values_are_checked() -> None:
    with pytest.raises(ConfigError, match="factor"):
        StretchBackoff(1.0)
    with pytest.raises(ConfigError, match="no action"):
        BudgetPolicy("delivery", when_burn_above=6, then=())
    with pytest.raises(ConfigError, match="recover_below"):
        BudgetPolicy("delivery", when_burn_above=6, then=(StretchBackoff(),), recover_below=7)
    with pytest.raises(ConfigError, match="at most 10"):
        StretchBackoff(50)
    listed = BudgetPolicy("delivery", when_burn_above=6, then=[StretchBackoff()])  # type: ignore[arg-type]
    assert listed.then == (StretchBackoff(),)
    assert hash(listed)


def test_deferring_a_handler_its_own_lag_slo_covers_is_refused() -> None:
    topology = Topology("shop", slos=(SLO("fresh", sli="lag", objective=0.99, threshold="30s"),),
                        budget_policies=(BudgetPolicy("fresh", when_burn_above=6, then=(Defer("b"),)),))
    for name in ("a", "b"):
        topology.handler(source="orders", name=name, priority="low" if name == "b" else "normal")(_handle)
    with pytest.raises(ConfigError, match="would grow the lag this lag SLO measures"):
        topology.check_policies()
