"""Error-budget policies: what a worker does by itself while an SLO's budget burns, and undoes when it recovers.

``BudgetPolicy(slo="delivery", when_burn_above=6, then=(StretchBackoff(4), Defer("notify_shipping")))``:
while the burn rate a worker sees over ``window`` (its own counters, processor.observability.budget) is
above ``when_burn_above``, with at least the SLO's ``min_events`` in the window, the worker takes the
actions; once it is below ``recover_below`` (half the trigger unless given) it undoes them. No action drops
an event:

- ``StretchBackoff(factor)``: retries of the SLO's handlers are due ``factor`` times later (a struggling
  downstream gets room to recover instead of a retry storm);
- ``Defer(handler)``: a handler declared ``priority="low"`` stops consuming (its partitions pause; its lag
  grows, and drains after): the capacity goes to the others;
- ``LowerConcurrency(handler, to)``: at most ``to`` of its calls at once per partition.

Every change is a metric (``processor_budget_policy_active``), a log line and a span event.
"""

from __future__ import annotations

from dataclasses import dataclass

from processor.errors import ConfigError
from processor.topology.slo import window_seconds

# A stretched delay is written into the retry's due time when it is routed, so it outlasts the policy (and a
# later retry of its tier partition waits behind it): the cap bounds that, far inside any retry topic's retention.
MAX_STRETCH = 10.0
DEFER_REASON = "budget"  # the hold reason of a deferred handler's partitions (processor_paused_partitions)


@dataclass(frozen=True)
class StretchBackoff:
    """Retry delays of the SLO's handlers times ``factor`` while the policy acts."""

    factor: float = 4.0

    def __post_init__(self) -> None:
        if not 1 < self.factor <= MAX_STRETCH:
            raise ConfigError(f"StretchBackoff factor {self.factor} must be above 1 and at most {MAX_STRETCH:g}")

    @property
    def name(self) -> str:
        return "stretch_backoff"


@dataclass(frozen=True)
class Defer:
    """Pause the partitions of a ``priority="low"`` handler while the policy acts."""

    handler: str

    @property
    def name(self) -> str:
        return f"defer:{self.handler}"


@dataclass(frozen=True)
class LowerConcurrency:
    """At most ``to`` calls of ``handler`` at once per partition while the policy acts."""

    handler: str
    to: int = 1

    def __post_init__(self) -> None:
        if self.to < 1:
            raise ConfigError(f"LowerConcurrency({self.handler!r}) to {self.to} must be 1 or more")

    @property
    def name(self) -> str:
        return f"lower_concurrency:{self.handler}"


Action = StretchBackoff | Defer | LowerConcurrency


@dataclass(frozen=True)
class BudgetPolicy:
    """Actions taken while ``slo`` burns over ``when_burn_above`` (see the module docstring)."""

    slo: str
    when_burn_above: float
    then: tuple[Action, ...]
    window: str = "5m"
    recover_below: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "then", tuple(self.then))  # a list would leave the policy unhashable
        window_seconds(self.window)
        if self.when_burn_above <= 0:
            raise ConfigError(f"BudgetPolicy({self.slo!r}): when_burn_above must be above 0")
        if not self.then:
            raise ConfigError(f"BudgetPolicy({self.slo!r}): then= names no action")
        if self.recover_below is not None and not 0 <= self.recover_below < self.when_burn_above:
            raise ConfigError(f"BudgetPolicy({self.slo!r}): recover_below must be below when_burn_above")

    @property
    def recovery(self) -> float:
        """The burn rate under which the actions are undone."""
        return self.when_burn_above / 2 if self.recover_below is None else self.recover_below
